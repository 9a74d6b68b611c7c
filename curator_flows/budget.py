"""The cost budget (``backend_params["max_cost"]``): a ceiling for the whole run that the run
reaches, and cost estimates before sending.

What a run has committed = what it **spent** + what is **reserved**:
- *spent* is what it paid, read so that nothing paid is lost or counted twice: the response
  lines' charge plus, per step, what its ledger paid beyond its lines
  (:func:`curator_flows.ledger.unlined`); a sending step reads it once when it starts and, while
  it runs, other steps' ledgers (re-read every ``REFRESH_SECONDS``) bring their new spending;
- *reserved* is what is held for work whose cost is not known yet: every running step's
  requests in flight (its ledger's ``reserved``) and every batch submitted and not yet collected
  (its worst case, ``budget/batch-<shard>-r<round>.json``, less what its collected lines already
  charged).

Invariants:
- a request is sent (a batch submitted) only when committed + its reservation stays within
  ``max_cost``. A request reserves its cost estimated from what the run observed: its input
  estimate (times the largest ratio of reported to estimated input seen) and the longest output
  seen (this step's answers, the run's lines, other steps' ledgers; the cap or a default until
  five answers are in), capped by ``max_tokens``, or its ``max_tokens`` worst case once a window
  of worst cases no longer fits; it settles to what the answer cost. A batch reserves its worst
  case: every request's input and its
  ``max_tokens`` (without one, the most the model may answer, else the longest output the
  run's lines hold or the default);
- a reservation that does not fit while others are outstanding (they may refund) waits for
  them; dispatch stops (:class:`~curator_flows.errors.BudgetExceededError`, with spent and
  reserved apart) only when nothing outstanding could make room, so a run stops within one
  request's (one batch's) worst case of ``max_cost``;
- a step announces what it will hold (writes its ledger, or its batch reservation file) before
  it reads what the others hold, and withdraws when the total passes ``max_cost``: of two
  steps reserving at once, at least one sees the other, so together they never pass it. An
  online step announces an allotment for about a window of requests at a time and uses it
  without I/O (see :class:`Budget`);
- a reservation is valued at what the run knows *now*, not when it was made: a hold without
  ``max_tokens`` records the output it assumed (``open_output`` tokens for ``open_choices``
  choices, in the step's ledger too), and whoever adds up the run's commitments (the step
  itself, a parallel step, a batch about to be submitted) tops it up to the longest output the
  run has seen since. Requests sent before the first answers assume a default length; once
  answers show longer ones, every step counts the requests still in flight anywhere at that
  length;
- the run passes ``max_cost`` only by what answers cost beyond that: an output longer than any
  the run had seen when the last request was sent, when no ``max_tokens`` bounds it (with
  ``max_tokens``, the last requests before the ceiling hold their worst case).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .backends.factory import DEFAULT_OUTPUT_ESTIMATE, OutputRule, output_estimate, output_rule
from .cost import Prices, max_output_tokens, resolve_prices
from .credentials import Credentials
from .errors import BudgetExceededError, ConfigError
from .ledger import LedgerReader, ledger_id, live_open_holds, live_reserved, shortfall_tokens
from .pending import Charge, done_ids, pending_items, read_shard, responses_pattern, retries_stem
from .results import EstimateResult, make
from .runs import RunRef, llm_for, open_run
from .store import MANIFEST, RunStore
from .tokens import Observed, estimate_prompt_tokens

if TYPE_CHECKING:
    from .llm import LLM

#: how often a running step re-reads what parallel steps spent and reserved
REFRESH_SECONDS = 1.0
#: dollars below which sums of floats are equal
_ROUNDING = 1e-12
BATCH_RESERVATIONS = "budget"


# ------------------------------------------------------------------------------- spent
class RunLines:
    """What the run's response lines charge: in all (``paid``), per step that tagged its lines
    (``by_step``), and the longest output they hold."""

    def __init__(self, store: RunStore, manifest: dict[str, Any]) -> None:
        batch = manifest["mode"] == "batch"
        self.paid = Charge()
        self.by_step: dict[str, Charge] = {}
        self.longest_output = 0
        for shard in manifest["shards"]:
            lines = read_shard(store, shard["name"], retries=batch)
            self.paid.add(lines.paid.input_tokens, lines.paid.output_tokens, lines.paid.cost)
            for step, charge in lines.by_step.items():
                self.by_step.setdefault(step, Charge()).add(
                    charge.input_tokens, charge.output_tokens, charge.cost
                )
            self.longest_output = max(self.longest_output, lines.longest_output)

    @property
    def untagged(self) -> float:
        """Dollars of lines no step tagged (batch lines, lines of older versions)."""
        return self.paid.cost - sum(charge.cost for charge in self.by_step.values())


def paid_by_steps(
    entries: list[dict[str, Any]], by_step: dict[str, Charge], exclude: str | None = None
) -> float:
    """Dollars the steps paid: per step, the larger of its ledger's cost (steps that tag their
    lines) and its lines' charge; ``exclude``: one step's id."""
    ledgers = {
        ledger_id(entry): float(entry.get("cost") or 0.0)
        for entry in entries
        if entry.get("tags_lines")
    }
    total = 0.0
    for step in set(ledgers) | set(by_step):
        if step != exclude:
            lines = by_step.get(step)
            total += max(ledgers.get(step, 0.0), lines.cost if lines else 0.0)
    return total


def longest_known(lines: RunLines, entries: list[dict[str, Any]]) -> int:
    """The longest output (tokens per choice) the run's lines and step ledgers have seen."""
    return max([lines.longest_output] + [int(e.get("longest_output") or 0) for e in entries])


def held_by_steps(entries: list[dict[str, Any]], prices: Prices, longest: float) -> float:
    """Dollars running steps hold: their reservations, topped up to ``longest`` output tokens
    per choice for holds that assumed less (see the module's invariants)."""
    shortfall = shortfall_tokens(live_open_holds(entries), longest)
    return live_reserved(entries) + prices.cost(0, math.ceil(shortfall))


def run_committed(store: RunStore, manifest: dict[str, Any], prices: Prices) -> tuple[float, float]:
    """``(spent, reserved)`` of the run now, from its files alone (holds topped up to the
    longest output seen)."""
    lines = RunLines(store, manifest)
    entries = LedgerReader(store).read()
    spent = lines.untagged + paid_by_steps(entries, lines.by_step)
    held = held_by_steps(entries, prices, longest_known(lines, entries))
    return spent, held + open_batch_reservations(store)


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
    spent, reserved = run_committed(store, manifest, prices)
    max_cost = getattr(params, "max_cost", None)
    headroom = None if max_cost is None else max_cost - spent - reserved - projected
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
        spent=spent,
        reserved=reserved,
        projected_cost=projected,
        max_cost=max_cost,
        headroom=headroom,
        within_budget=headroom is None or headroom >= 0,
    )


def require_prices(prices: Prices) -> None:
    if prices.input is None or prices.output is None:
        raise ConfigError(
            "max_cost needs prices for the model: set backend_params in_mtok_cost and "
            "out_mtok_cost (dollars per million tokens)"
        )


def exceeded_error(
    max_cost: float, spent: float, reserved: float, estimate: float, what: str
) -> BudgetExceededError:
    """The error that stops a run at its budget, with what was spent and what is reserved."""
    remaining = max(0.0, max_cost - spent - reserved)
    return BudgetExceededError(
        f"the run's budget (max_cost=${max_cost:.4f}) is reached: ${spent:.4f} spent, "
        f"${reserved:.4f} reserved for work in flight, ${remaining:.4f} remaining, and the next "
        f"{what} may cost ${estimate:.6f}; nothing more is sent. Raise max_cost and run again "
        "to resume (nothing already answered is sent again)",
        spent=spent,
        budget=max_cost,
        reserved=reserved,
    )


# ------------------------------------------------------------------------------ online
@dataclass(frozen=True)
class Quote:
    """What a request may cost: ``estimate`` (the longest output seen, ``output`` tokens per
    choice) and ``worst`` (its ``max_tokens``; without one, the estimate). ``open_choices``:
    its choices when no ``max_tokens`` bounds it (its hold may fall short), else 0."""

    estimate: float
    worst: float
    output: float
    open_choices: int


@dataclass(frozen=True)
class Hold:
    """Dollars held for one request in flight; ``open_output``: the output tokens (all
    choices) it assumed when no ``max_tokens`` bounds it, for ``open_choices`` choices."""

    dollars: float
    open_output: int = 0
    open_choices: int = 0


#: a request sent without a budget holds nothing
NO_HOLD = Hold(0.0)


@dataclass(frozen=True)
class LedgerRead:
    """Other steps' ledgers as read at ``started`` (``time.monotonic()``)."""

    entries: list[dict[str, Any]]
    started: float


class Budget:
    """``max_cost`` for one sending step: what the run spent (lines and ledgers when the step
    started, other steps' ledgers since) and reserved (other live steps), plus this step's own
    spending and what it holds. See the module's invariants.

    The step holds an *allotment* it announced: ``in_flight`` (its requests' reservations) plus
    ``free`` (announced, not used yet). A request takes its reservation from ``free`` without
    any I/O; when ``free`` is short, the step announces a new allotment (about a window of
    requests, at most what is left), that is: writes its ledger, then reads the others', and
    withdraws when the total passes ``max_cost``. A settled request's reservation less its cost
    goes back to ``free``; ``free`` is given up whenever a request does not fit."""

    def __init__(
        self, store: RunStore, manifest: dict[str, Any], max_cost: float, prices: Prices
    ) -> None:
        self.store = store
        self.max_cost = float(max_cost)
        self.prices = prices
        self.reader = LedgerReader(store)
        self.lines = RunLines(store, manifest)
        self.own_rel: str | None = None
        self.own_id: str | None = None
        self.others_spent = 0.0
        self.others_reserved = 0.0
        self.own = 0.0
        self.in_flight = 0.0
        self.free = 0.0
        #: the output tokens (all choices) this step's unbounded holds in flight assumed
        self.open_output = 0
        self.open_choices = 0
        #: the output (tokens per choice) the last unbounded quote expected; holds are valued
        #: at it or at the longest output the run's lines and ledgers show, if longer
        self.expected_output = 0.0
        #: other live steps' unbounded holds, as their ledgers announced them
        self.others_open: list[tuple[int, int]] = []
        #: the longest answer the run's lines and other steps have seen
        self.longest_seen = 0
        #: requests a new allotment is made for (the runner's concurrency)
        self.window = 1
        self.refused = 0.0
        self.refreshed_at = self.absorbed_at = float("-inf")
        self.input_ratio = Observed(1.0)
        self.settled: asyncio.Event | None = None
        self.publish: Callable[[], None] | None = None  # the runner's: write own ledger now
        self.refresh(force=True)

    @classmethod
    def for_run(
        cls, store: RunStore, manifest: dict[str, Any], max_cost: float, prices: Prices
    ) -> Budget:
        require_prices(prices)
        return cls(store, manifest, max_cost, prices)

    def exclude(self, rel: str, step_id: str) -> None:
        """This step's own ledger (counted as ``own``, not as another step's)."""
        self.own_rel, self.own_id = rel, step_id
        self.refresh(force=True)

    @property
    def spent(self) -> float:
        return self.others_spent + self.own

    @property
    def reserved(self) -> float:
        """What this step holds (its ledger's ``reserved``)."""
        return self.in_flight + self.free

    @property
    def committed(self) -> float:
        return (
            self.others_spent + self.others_reserved + self.own + self.reserved + self.shortfall()
        )

    def shortfall(self) -> float:
        """Dollars by which holds in flight (this step's and other live steps') fall short
        of the output the run expects now."""
        holds = [(self.open_choices, self.open_output), *self.others_open]
        tokens = shortfall_tokens(holds, max(self.expected_output, self.longest_seen))
        return self.prices.cost(0, math.ceil(tokens))

    # ----------------------------------------------------------------- estimates
    def cost_of(self, est_input: int, rule: OutputRule, outputs: Observed) -> Quote:
        """A request's quote: its input estimate scaled by the largest reported/estimated ratio
        seen, with the longest output seen (the estimate: this step's answers, the run's lines,
        other steps' ledgers) or its ``max_tokens`` (the worst case; without one, the
        estimate)."""
        tokens_in = math.ceil(est_input * max(1.0, self.input_ratio.most()))
        longest = max(outputs.most(rule.cap), min(self.longest_seen, rule.cap or math.inf))
        estimate = self.prices.cost(tokens_in, math.ceil(longest) * rule.choices)
        if rule.cap is None:
            return Quote(estimate, estimate, math.ceil(longest), rule.choices)
        worst = self.prices.cost(tokens_in, rule.cap * rule.choices)
        return Quote(estimate, worst, math.ceil(longest), 0)

    def observe(self, est_input: int, used_input: int) -> None:
        if est_input > 0 and used_input > 0:
            self.input_ratio.observe(used_input / est_input)

    # ------------------------------------------------------------- reservations
    def reserve(self, quote: Quote) -> Hold | None:
        """Hold dollars for a request about to be sent; ``None`` (nothing held, ``free`` given
        up) when the run's committed total would pass ``max_cost``. A request holds its
        estimate, or its worst case once a window of worst cases no longer fits in what is
        left; holds in flight are valued at the quote's output (see the module's invariants)."""
        if quote.open_choices:  # what the run expects of an unbounded output now
            self.expected_output = quote.output
        base = self.committed - self.free
        amount = quote.estimate
        if base + self.window * quote.worst > self.max_cost:
            amount = max(quote.estimate, quote.worst)
        open_choices = quote.open_choices if amount == quote.estimate else 0
        hold = Hold(amount, math.ceil(quote.output) * open_choices, open_choices)
        if amount <= self.free:
            self.free -= amount
            self._take(hold, +1)
            return hold
        self.refresh(force=True)
        room = self.max_cost - (self.committed - self.free)
        if amount <= room:
            self.free = min(self.window * amount, room) - amount
            self._take(hold, +1)
            self._publish()  # announce, then read the others: see the module's invariants
            self.refresh(force=True)
            if self.committed <= self.max_cost + _ROUNDING:
                return hold
            self._take(hold, -1)
        self.refused = amount
        self.free = 0.0
        self._publish()
        return None

    def _take(self, hold: Hold, sign: int) -> None:
        self.in_flight += sign * hold.dollars
        self.open_output += sign * hold.open_output
        self.open_choices += sign * hold.open_choices

    def _publish(self) -> None:
        if self.publish is not None:
            self.publish()

    def settle(self, hold: Hold, actual: float) -> None:
        """A request answered (``actual`` dollars paid) or not sent (0): its reservation less
        what it cost goes back to ``free``."""
        self._take(hold, -1)
        self.own += actual
        self.free = max(0.0, self.free + hold.dollars - actual)
        if self.in_flight < _ROUNDING:  # nothing in flight: no float residue
            self.in_flight = 0.0
        if self.settled is not None:
            self.settled.set()

    def outstanding(self) -> bool:
        """Whether reservations are in flight anywhere (settling them may make room)."""
        return self.in_flight > _ROUNDING or self.others_reserved > _ROUNDING

    async def wait(self) -> None:
        """Until one of this step's reservations settles, or it is time to read the others'."""
        if self.settled is None:
            self.settled = asyncio.Event()
        self.settled.clear()
        try:  # jittered: two steps that withdrew together do not retry together
            await asyncio.wait_for(self.settled.wait(), REFRESH_SECONDS * random.uniform(0.5, 1.0))
        except TimeoutError:
            pass
        self.refresh()

    def refresh(self, force: bool = False) -> None:
        """Read what parallel steps spent and hold (at most every ``REFRESH_SECONDS`` unless
        ``force``) and apply it."""
        read = self.read_others(force)
        if read is not None:
            self.absorb(read)

    def read_others(self, force: bool = False) -> LedgerRead | None:
        """The other steps' ledgers, when it is time to read them (I/O only: safe in a thread
        while the loop uses the budget); ``None`` when not due or unreadable."""
        started = time.monotonic()
        if not force and started - self.refreshed_at < REFRESH_SECONDS:
            return None
        self.refreshed_at = started
        try:
            return LedgerRead(self.reader.read(exclude=self.own_rel), started)
        except OSError:
            return None  # keep the last known figures

    def absorb(self, read: LedgerRead) -> None:
        """Apply what a read found, unless a read begun later was applied already."""
        if read.started < self.absorbed_at:
            return
        self.absorbed_at = read.started
        entries = read.entries
        by_step = self.lines.by_step
        self.others_spent = self.lines.untagged + paid_by_steps(entries, by_step, self.own_id)
        self.others_reserved = live_reserved(entries)
        self.others_open = live_open_holds(entries)
        self.longest_seen = longest_known(self.lines, entries)

    def exceeded(self, estimate: float | None = None) -> BudgetExceededError:
        """The error that stops dispatch (``estimate``: the request refused; default the last)."""
        self.refresh(force=True)
        estimate = self.refused if estimate is None else estimate
        held = self.others_reserved + self.in_flight + self.shortfall()
        return exceeded_error(self.max_cost, self.spent, held, estimate, "request")


# ------------------------------------------------------------------------------- batch
def _reservation_rel(shard: str, round_index: int) -> str:
    return f"{BATCH_RESERVATIONS}/batch-{shard}-r{round_index:05d}.json"


def _round_charge(store: RunStore, shard: str, round_index: int) -> tuple[set[str], float]:
    """The ids a batch round's lines (and retry log) account for, and what they charge."""
    ids: set[str] = set()
    cost = 0.0
    for pattern in (responses_pattern(shard), f"{retries_stem(shard)}*jsonl"):
        for record in store.iter_records(pattern):
            if record.get("round") == round_index and "reused_from" not in record:
                ids.add(record.get("id"))
                cost += float(record.get("cost") or 0.0)
    return ids, cost


def open_batch_reservations(store: RunStore, exclude: str | None = None) -> float:
    """Dollars still held for submitted batches: each round's worst case less what its lines
    charged, until its lines (or retry log) account for every request of the round; a settled
    reservation's file is removed."""
    held = 0.0
    for rel in store.glob(f"{BATCH_RESERVATIONS}/batch-*.json"):
        if rel == exclude or ".tmp-" in rel:
            continue
        entry = store.read_json_if_exists(rel)
        if entry is None:
            continue
        ids, charged = _round_charge(store, entry["shard"], entry["round"])
        if len(ids) >= int(entry["requests"]):
            try:
                store.remove(rel)
            except OSError:
                pass
            continue
        held += max(0.0, float(entry["reserved"]) - charged)
    return held


def reserve_batch(
    store: RunStore, llm: LLM, shard: str, round_index: int, requests: Iterable[dict[str, Any]]
) -> bool:
    """Before a batch round of ``requests`` is created: hold its worst case against
    ``max_cost``. ``False`` when it does not fit while other batches are outstanding (submit
    again once they are collected); raises :class:`BudgetExceededError` when nothing
    outstanding could make room. Without ``max_cost``: ``True``."""
    params = llm.config.params
    max_cost = getattr(params, "max_cost", None)
    if not max_cost:
        return True
    prices = resolve_prices(llm.model_name, params.in_mtok_cost, params.out_mtok_cost, batch=True)
    require_prices(prices)
    manifest = store.read_json(MANIFEST)
    rule = output_rule(llm)
    fallback = max_output_tokens(llm.model_name)
    if fallback is None and rule.cap is None:
        fallback = max(RunLines(store, manifest).longest_output, DEFAULT_OUTPUT_ESTIMATE)
    count, worst = 0, 0.0
    for request in requests:
        row = rule.for_row(request.get("params"))
        count += 1
        worst += prices.cost(
            estimate_prompt_tokens(request["messages"]), (row.cap or fallback or 0) * row.choices
        )
    if count == 0:
        return True
    rel = _reservation_rel(shard, round_index)
    for old in store.glob(f"{BATCH_RESERVATIONS}/batch-{shard}-r*.json"):
        if old != rel:  # an earlier round of this shard: collected before this one is submitted
            store.remove(old)
    announcement = {"shard": shard, "round": round_index, "requests": count, "reserved": worst}
    store.write_json(rel, {**announcement, "at": time.time()})  # announce first
    # then what others hold, then what was spent: a batch collected in between is counted
    # twice (its reservation and its lines), never not at all
    entries = LedgerReader(store).read()
    batches = open_batch_reservations(store, exclude=rel)
    lines = RunLines(store, manifest)
    others = batches + held_by_steps(entries, prices, longest_known(lines, entries))
    spent = lines.untagged + paid_by_steps(entries, lines.by_step)
    if spent + others + worst <= max_cost + _ROUNDING:
        return True
    store.remove(rel)
    if others > _ROUNDING:
        return False
    raise exceeded_error(max_cost, spent, others, worst, f"batch (shard {shard}, {count} requests)")
