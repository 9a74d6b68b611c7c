"""Simulator configuration.

`SimulatorConfig` is an immutable value: changing configuration at runtime builds a new one
(`with_changes`) and swaps it in, so a request handler that read the config once sees one
consistent set of values for its whole life.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

#: Fault kinds the simulator can inject (see `faults.py`).
FAULT_KINDS: frozenset[str] = frozenset(
    {"500", "503", "529", "429", "hang", "drop", "malformed", "length", "schema_invalid"}
)

#: Default seconds a batch spends in each phase (validating -> in_progress -> finalizing),
#: plus how long a cancel takes to settle.
DEFAULT_BATCH_TIMINGS: dict[str, float] = {
    "validating": 0.2,
    "in_progress": 0.5,
    "finalizing": 0.2,
    "cancelling": 0.2,
}

UNLIMITED = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """Everything that changes how the simulator behaves.

    Limits are per minute; ``None`` means unlimited (large limits are advertised in headers).
    ``rpd``/``tpd`` are OpenAI's per-day limits and ``credit_requests`` the account's prepaid
    credit, counted in paid requests (see `account`); ``None`` (the default) means none.
    ``faults`` maps a fault kind (`FAULT_KINDS`) to the probability of injecting it on a request.
    ``batch_timings`` overrides entries of `DEFAULT_BATCH_TIMINGS` (seconds per phase).
    """

    host: str = "127.0.0.1"
    port: int = 0
    # --- rate limits (per minute) ---
    rpm: int | None = None
    tpm: int | None = None
    input_tpm: int | None = None
    output_tpm: int | None = None
    burst_seconds: float = 2.0
    # --- the account (see `account`) ---
    rpd: int | None = None
    tpd: int | None = None
    credit_requests: int | None = None
    # --- latency ---
    latency: float = 0.0
    latency_jitter: float = 0.0
    # --- faults ---
    faults: Mapping[str, float] | None = None
    hang_seconds: float = 30.0
    seed: int = 0
    # --- auth ---
    require_api_key: str | None = None
    # --- content ---
    min_words: int = 6
    max_words: int = 30
    #: every text answer is exactly this many tokens (``None``: min_words..max_words words);
    #: deterministic costs for tests and benchmarks (capped by the request's max_tokens)
    completion_tokens: int | None = None
    # --- batches ---
    batch_timings: Mapping[str, float] | None = None
    batch_fail_validation: bool = False
    batch_expire_fraction: float | None = None
    max_file_bytes: int = 200 * 1024 * 1024
    max_batch_lines: int = 50_000
    max_anthropic_batch_requests: int = 100_000
    max_anthropic_batch_bytes: int = 256 * 1024 * 1024
    # --- batch queue limits (the providers' limits on work waiting in their batch queues) ---
    #: OpenAI's enqueued token limit: input tokens of one model's live batches (validating,
    #: in_progress, finalizing, cancelling); a batch past it is created, then fails validation
    #: with ``token_limit_exceeded`` (``None``: unlimited)
    batch_enqueued_token_limit: int | None = None
    #: Anthropic's limit on batch requests in the processing queue (requests of batches not yet
    #: ended); a create past it is answered 429 ``rate_limit_error`` (``None``: unlimited)
    batch_queue_request_limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "input_tpm", "output_tpm"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or value <= 0):
                raise ValueError(f"{name} must be a positive number or None, got {value!r}")
        for name in ("rpd", "tpd"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        credit = self.credit_requests
        if credit is not None and (not isinstance(credit, int) or credit < 0):
            raise ValueError(f"credit_requests must be an integer >= 0 or None, got {credit!r}")
        if self.burst_seconds <= 0:
            raise ValueError("burst_seconds must be > 0")
        if self.latency < 0 or self.latency_jitter < 0:
            raise ValueError("latency and latency_jitter must be >= 0")
        if self.faults:
            faults = dict(self.faults)
            for kind, rate in faults.items():
                if kind not in FAULT_KINDS:
                    raise ValueError(
                        f"unknown fault kind {kind!r}; known: {', '.join(sorted(FAULT_KINDS))}"
                    )
                if not 0.0 <= float(rate) <= 1.0:
                    raise ValueError(f"fault rate for {kind!r} must be within [0, 1]")
            object.__setattr__(self, "faults", {k: float(v) for k, v in faults.items()})
        if self.batch_timings:
            unknown = set(self.batch_timings) - set(DEFAULT_BATCH_TIMINGS)
            if unknown:
                raise ValueError(f"unknown batch_timings keys: {sorted(unknown)}")
            if any(float(v) < 0 for v in self.batch_timings.values()):
                raise ValueError("batch_timings must be >= 0")
        if self.batch_expire_fraction is not None and not 0.0 <= self.batch_expire_fraction <= 1:
            raise ValueError("batch_expire_fraction must be within [0, 1]")
        for name in ("batch_enqueued_token_limit", "batch_queue_request_limit"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if self.min_words < 1 or self.max_words < self.min_words:
            raise ValueError("need 1 <= min_words <= max_words")
        if self.completion_tokens is not None and self.completion_tokens < 1:
            raise ValueError("completion_tokens must be >= 1 or None")

    @property
    def timings(self) -> dict[str, float]:
        """Batch phase durations with defaults filled in."""
        merged = dict(DEFAULT_BATCH_TIMINGS)
        if self.batch_timings:
            merged.update({k: float(v) for k, v in self.batch_timings.items()})
        return merged

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimulatorConfig:
        """Build a config from a mapping, rejecting unknown keys."""
        unknown = set(data) - cls.field_names()
        if unknown:
            raise ValueError(f"unknown simulator config keys: {sorted(unknown)}")
        return cls(**data)

    def with_changes(self, **changes: Any) -> SimulatorConfig:
        """A copy with `changes` applied (validated like the constructor)."""
        unknown = set(changes) - self.field_names()
        if unknown:
            raise ValueError(f"unknown simulator config keys: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["faults"] = dict(self.faults) if self.faults else None
        out["batch_timings"] = dict(self.batch_timings) if self.batch_timings else None
        return out


def parse_fault_spec(spec: str) -> tuple[str, float]:
    """Parse a CLI fault spec ``KIND=RATE`` (e.g. ``500=0.1``); a bare ``KIND`` means rate 1."""
    kind, sep, rate = spec.partition("=")
    kind = kind.strip()
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(sorted(FAULT_KINDS))}")
    return kind, float(rate) if sep else 1.0
