"""The cost budget (``backend_params["max_cost"]``) and cost estimates before sending.

Invariants:
- what a run spent is read from the store (every step's ledger, :mod:`curator_flows.ledger`), so
  the budget holds across shards, steps, processes and retries;
- an estimate sends nothing: input tokens from the offline estimator, output tokens from the
  request's cap (``max_tokens``) or a default, priced with the run's price table.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .backends.factory import output_estimate
from .cost import Prices, resolve_prices
from .credentials import Credentials
from .errors import BudgetExceededError, ConfigError
from .ledger import spent
from .pending import done_ids, pending_items
from .results import EstimateResult, make
from .runs import RunRef, llm_for, open_run
from .store import RunStore

if TYPE_CHECKING:
    from .llm import LLM


def estimate_run(
    run: RunRef,
    *,
    llm: LLM | None = None,
    credentials: Credentials | dict[str, Any] | None = None,
) -> EstimateResult:
    """See :func:`curator_flows.steps.estimate`."""
    credentials = Credentials.coerce(credentials)
    store, manifest = open_run(run, credentials.storage_options)
    llm = llm_for(manifest, llm)
    params = llm.config.params
    prices = resolve_prices(
        llm.model_name, params.in_mtok_cost, params.out_mtok_cost, manifest["mode"] == "batch"
    )
    names = [s["name"] for s in manifest["shards"]]
    per_output = output_estimate(llm)
    pending = tokens_in = 0
    for item in pending_items(store, names, done_ids(store, names)):
        pending += 1
        tokens_in += item.est_input
    tokens_out = pending * per_output
    projected = prices.cost(tokens_in, tokens_out)
    so_far = spent(store)
    max_cost = getattr(params, "max_cost", None)
    headroom = None if max_cost is None else max_cost - so_far - projected
    return make(
        EstimateResult,
        run_uri=store.uri,
        run_id=manifest["run_id"],
        model_name=llm.model_name,
        requests=manifest["requests"],
        pending=pending,
        estimated_input_tokens=tokens_in,
        estimated_output_tokens=tokens_out,
        input_cost_per_million=prices.input,
        output_cost_per_million=prices.output,
        spent=so_far,
        projected_cost=projected,
        max_cost=max_cost,
        headroom=headroom,
        within_budget=headroom is None or headroom >= 0,
    )


#: how often a running step re-reads what parallel steps spent
REFRESH_SECONDS = 1.0
#: within this fraction of ``max_cost``, every reservation is decided on fresh figures
CAREFUL_FRACTION = 0.8


class Budget:
    """``max_cost`` for one step: what other steps spent and reserved (their ledgers, re-read
    every ``REFRESH_SECONDS``) + what this step spent + what its in-flight requests may cost.

    Near the budget (past ``CAREFUL_FRACTION`` of it) each reservation first calls ``sync``
    (publish this step's own figures, read the others' afresh), so parallel steps overshoot by
    at most what was in flight between two such reads."""

    def __init__(self, store: RunStore, max_cost: float) -> None:
        self.store = store
        self.max_cost = float(max_cost)
        self.own_rel: str | None = None
        self.others = spent(store)
        self.own = 0.0
        self.reserved = 0.0
        self.refused = 0.0
        self.refreshed_at = time.monotonic()
        self.sync: Any = None  # set by the runner: publish own figures, then refresh(force)

    @classmethod
    def for_run(cls, store: RunStore, max_cost: float, prices: Prices) -> Budget:
        if prices.input is None or prices.output is None:
            raise ConfigError(
                "max_cost needs prices for the model: set backend_params in_mtok_cost and "
                "out_mtok_cost (dollars per million tokens)"
            )
        return cls(store, max_cost)

    def exclude(self, rel: str) -> None:
        """This step's own ledger (counted as ``own``, not as another step's spending)."""
        self.own_rel = rel
        self.others = spent(self.store, exclude=rel)

    @property
    def spent(self) -> float:
        return self.others + self.own

    def reserve(self, estimate: float) -> bool:
        """Hold ``estimate`` dollars for a request about to be sent; ``False`` (nothing held)
        when that could take the run past ``max_cost``."""
        near = self.others + self.own + self.reserved + estimate > CAREFUL_FRACTION * self.max_cost
        if near and self.sync is not None:
            self.sync()
        if self.others + self.own + self.reserved + estimate > self.max_cost:
            self.refused = estimate
            return False
        self.reserved += estimate
        return True

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved = max(0.0, self.reserved - reserved)
        self.own += actual

    def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.refreshed_at < REFRESH_SECONDS:
            return
        self.refreshed_at = time.monotonic()
        try:
            self.others = spent(self.store, exclude=self.own_rel)
        except OSError:
            pass  # keep the last known figure

    def exceeded(self, estimate: float | None = None) -> BudgetExceededError:
        """The error that stops dispatch (``estimate``: the request refused; default the last)."""
        estimate = self.refused if estimate is None else estimate
        spent_now = self.spent
        return BudgetExceededError(
            f"the run's budget (max_cost=${self.max_cost:.4f}) would be exceeded: ${spent_now:.4f} "
            f"spent so far, ${max(0.0, self.max_cost - spent_now):.4f} remaining, and the next "
            f"request may cost ${estimate:.6f}; dispatch stopped. Raise max_cost and run again to "
            "resume (nothing already answered is sent again)",
            spent=spent_now,
            budget=self.max_cost,
        )
