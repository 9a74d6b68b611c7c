"""A run for people to read: counts, cost, failures by reason, and its rows (input, prompt,
raw response, parsed output) side by side.

- :mod:`.reader` reads a run directory, read-only, a page at a time;
- :mod:`.render` makes the page (one HTML file with its CSS and script inline), served live by
  :mod:`curator_flows.viewer` or written once, static, as ``_report.html`` beside a published
  dataset;
- :mod:`.preview` reads the first rows of a published dataset (the Prefect preview artifact).

Nothing here is imported by ``import curator_flows``; see docs/architecture.md ("Looking at a
run").
"""
