"""Cost from reported usage.

Prices, in dollars per million tokens, come from (first that applies): the user's
``in_mtok_cost`` / ``out_mtok_cost``; litellm's bundled model price map, read as a JSON file
without importing litellm (no network, no import cost); else unknown (cost 0, prices ``None``).
Batch prices use the map's batch rates, else half the online price. The same map says how many
tokens a model may answer at most (:func:`max_output_tokens`), the worst case of a request that
sets no ``max_tokens``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import orjson

_PRICE_FILE = "model_prices_and_context_window_backup.json"


@dataclass(frozen=True)
class Prices:
    """Dollars per million tokens; ``None`` when unknown."""

    input: float | None
    output: float | None

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return ((self.input or 0.0) * input_tokens + (self.output or 0.0) * output_tokens) / 1e6


@functools.lru_cache(maxsize=1)
def _price_map() -> dict:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = os.path.join(list(spec.submodule_search_locations)[0], _PRICE_FILE)
    try:
        with open(path, "rb") as handle:
            return orjson.loads(handle.read())  # 3.5 MB: json.load took 0.2 s of a fast run
    except (OSError, ValueError):
        return {}


def price_map() -> dict:
    """litellm's bundled model price map (``{}`` without litellm), read once per process."""
    return _price_map()


def _lookup(model: str) -> dict:
    table = _price_map()
    if model in table:
        return table[model]
    tail = model.split("/", 1)[-1]
    return table.get(tail, {})


def resolve_prices(
    model: str,
    in_mtok_cost: float | None = None,
    out_mtok_cost: float | None = None,
    batch: bool = False,
) -> Prices:
    """Prices for ``model``; user overrides win, each side independently."""
    entry = _lookup(model) if in_mtok_cost is None or out_mtok_cost is None else {}

    def side(user: float | None, key: str) -> float | None:
        if user is not None:
            return float(user) * (0.5 if batch else 1.0)
        per_token = entry.get(f"{key}_batches") if batch else None
        if per_token is not None:
            return per_token * 1e6
        per_token = entry.get(key)
        if per_token is None:
            return None
        return per_token * 1e6 * (0.5 if batch else 1.0)

    return Prices(
        side(in_mtok_cost, "input_cost_per_token"), side(out_mtok_cost, "output_cost_per_token")
    )


def max_output_tokens(model: str) -> int | None:
    """The most tokens ``model`` may answer with (litellm's map), ``None`` when unknown."""
    entry = _lookup(model)
    value = entry.get("max_output_tokens") or entry.get("max_tokens")
    return int(value) if isinstance(value, int | float) and value > 0 else None
