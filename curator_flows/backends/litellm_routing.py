"""Which model id litellm is given, and whether litellm can route it, decided when an ``LLM`` is
built rather than after its run has started.

Invariants:
- a provider alias that goes through litellm (``backend="gemini"``/``"mistral"``, see
  :data:`~curator_flows.credentials.PROVIDER_ALIASES`) sends a model name without a provider
  prefix under the alias's prefix (``gemini-2.0-flash`` → ``gemini/gemini-2.0-flash``); a name
  that has one (``vertex_ai/...``) is sent as given;
- a model is refused only when litellm cannot tell which provider serves it (litellm's own
  ``get_llm_provider`` raises for the model and ``base_url`` a call would get): a model missing
  from litellm's price map but routable (a new model, ``hosted_vllm/<name>``, ``openai/<name>``
  on a ``base_url``) is accepted; ``custom_llm_provider`` in the generation params routes any
  name; without litellm installed nothing is judged (the run says litellm is needed);
- nothing is sent, and ``import curator_flows`` imports no litellm. A model that litellm's
  bundled price map names, or a ``provider/`` prefix of a provider the map lists, is accepted
  from that JSON file alone; any other id makes this process import litellm once (seconds, which
  the run pays anyway), with the local price map so that the import fetches nothing. A prefix
  litellm lists as a provider is accepted without asking litellm further: resolving some
  providers' details starts their authentication flow.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from ..credentials import PROVIDER_ALIASES
from ..errors import ConfigError


def litellm_model(model_name: str, provider: str) -> str:
    """The model id litellm gets for ``model_name`` of ``provider`` (the LLM's provider alias,
    else ``"litellm"``)."""
    if PROVIDER_ALIASES.get(provider) != "litellm" or "/" in model_name:
        return model_name
    return f"{provider}/{model_name}"


@functools.lru_cache(maxsize=1)
def _listed_providers() -> frozenset[str]:
    from ..cost import price_map

    return frozenset(
        entry["litellm_provider"]
        for entry in price_map().values()
        if isinstance(entry, dict) and isinstance(entry.get("litellm_provider"), str)
    )


def _listed(model: str) -> bool:
    """Whether litellm's bundled price map names ``model`` or its provider prefix."""
    from ..cost import price_map

    if model in price_map():
        return True
    prefix, slash, _ = model.partition("/")
    return bool(slash) and prefix in _listed_providers()


def check_model(
    model: str, base_url: str | None = None, generation_params: dict[str, Any] | None = None
) -> None:
    """Raise :class:`~curator_flows.errors.ConfigError` when litellm cannot tell which provider
    serves ``model`` (see the module invariants)."""
    params = generation_params or {}
    if params.get("custom_llm_provider") or _listed(model):
        return
    base_url = base_url or params.get("api_base") or params.get("base_url")
    problem = _unroutable(model, base_url if isinstance(base_url, str) else None)
    if problem is None:
        return
    where = f" at base_url {base_url!r}" if base_url else ""
    raise ConfigError(
        f"litellm cannot tell which provider serves model {model!r}{where}: {problem}. Name "
        "the model as litellm expects it, with its provider prefix: e.g. "
        "'gemini/gemini-2.0-flash' (or backend='gemini'), 'mistral/mistral-large-latest' (or "
        "backend='mistral'), 'together_ai/<model>', 'hosted_vllm/<model>', or "
        "'openai/<model>' for an OpenAI-compatible server at base_url (or use backend='openai' "
        "with that base_url); or pass generation_params={'custom_llm_provider': ...}"
    )


@functools.lru_cache(maxsize=256)
def _unroutable(model: str, base_url: str | None) -> str | None:
    """litellm's reason for not routing ``model`` (``None``: it routes it, or litellm is not
    installed)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError:
        return None
    litellm.suppress_debug_info = True
    prefix, slash, _ = model.partition("/")
    if slash and prefix in {getattr(p, "value", p) for p in litellm.provider_list}:
        return None
    try:
        litellm.get_llm_provider(model=model, api_base=base_url)
    except Exception as exc:  # noqa: BLE001 - litellm raises its BadRequestError, or others
        first = str(getattr(exc, "message", None) or exc).strip().splitlines()
        return first[0][:200] if first else type(exc).__name__
    return None
