"""Batch mode: provider batch APIs (OpenAI, Anthropic) as resumable steps.

``prepare`` → ``submit`` → ``poll`` (until done) → ``collect`` → (``submit`` the next round while
collect says ``resubmit``) → ``finalize``. The public step functions are in
:mod:`curator_flows.steps`; here:

- :mod:`.records`   the batch record ``batches/<shard>.json`` (rounds, intent first, campaigns)
- :mod:`.steps`     submit, poll, cancel (and reconciliation after a crash)
- :mod:`.collect`   collect: results → response lines, retries → next round
- :mod:`.status`    status of any run from its files
- :mod:`.openai`, :mod:`.anthropic`   the provider clients (each documents its reconciliation)
- :mod:`.transport` the small synchronous HTTP client; :mod:`.sizing` batch line sizes
- :mod:`.advance`   ``advance``: submit → poll → collect → resubmit, without waiting
- :mod:`.inprocess` ``LLM(batch=True)(dataset)``

Importing this package imports nothing else (``import curator_flows`` stays light).
"""

from __future__ import annotations
