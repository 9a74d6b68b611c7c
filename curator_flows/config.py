"""Typed ``backend_params``: validated once, at ``LLM`` construction.

Invariants:
- an unknown key, a wrong type or an out-of-range value raises :class:`ConfigError` naming the
  key and, for unknown keys, every allowed key of the mode; a boolean is not a number, a number
  is finite, and ``base_url`` is an http(s) URL with a host, so no mistake here surfaces later
  as a retryable error;
- :meth:`BackendConfig.output_params` holds exactly the parameters that change what a request
  returns; it never holds secrets, rate limits or concurrency, so it is safe to fingerprint;
- :meth:`BackendConfig.public_dict` never contains the API key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .credentials import Secret, check_base_url
from .errors import ConfigError

__all__ = ["BackendConfig", "Mode"]

Mode = Literal["online", "batch", "offline"]


#: annotations of number fields, which refuse booleans (pydantic takes True as 1)
_NUMBERS = frozenset({int, float, int | None, float | None})


class _Params(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, arbitrary_types_allowed=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in _NUMBERS:
            raise ValueError(f"must be a number, not the boolean {value}")
        return value


class CommonParams(_Params):
    max_retries: int = Field(3, ge=0)
    require_all_responses: bool = False
    base_url: str | None = None
    request_timeout: float = Field(600, gt=0)
    #: held as a Secret: masked when shown, withheld when pickled (see credentials.Secret)
    api_key: Secret | None = None
    in_mtok_cost: float | None = Field(None, ge=0)
    out_mtok_cost: float | None = Field(None, ge=0)
    invalid_finish_reasons: tuple[str, ...] = ("content_filter", "length")
    #: dollars the whole run may spend (every shard, step and retry); see curator_flows.budget
    max_cost: float | None = Field(None, gt=0)
    #: seconds a shard lease lasts without renewal (a dead worker's shard is free after this)
    lease_seconds: float = Field(60.0, ge=1)
    # Ours, not Curator's: see docs/online.md, "backend_params".
    shard_size: int = Field(10_000, ge=1)
    progress: Literal["auto", "bar", "log", "off"] = "auto"

    @field_validator("api_key", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Secret | None:
        return Secret.of(value)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_base_url(value, "base_url")
        return value


class OnlineParams(CommonParams):
    max_requests_per_minute: int | None = Field(None, gt=0)
    max_tokens_per_minute: int | None = Field(None, gt=0)
    max_input_tokens_per_minute: int | None = Field(None, gt=0)
    max_output_tokens_per_minute: int | None = Field(None, gt=0)
    max_concurrent_requests: int | None = Field(None, gt=0)
    seconds_to_pause_on_rate_limit: float = Field(10.0, ge=0)
    max_tokens: int | None = Field(None, gt=0)
    #: local folder for paid answers the run directory cannot take (default: the system temp
    #: dir); the next step of the run on this machine merges them (see curator_flows.spill)
    spill_dir: str | None = None

    @model_validator(mode="after")
    def _token_strategy(self) -> OnlineParams:
        separate = self.max_input_tokens_per_minute or self.max_output_tokens_per_minute
        if separate and self.max_tokens_per_minute:
            raise ValueError(
                "max_tokens_per_minute cannot be combined with max_input_tokens_per_minute /"
                " max_output_tokens_per_minute: choose combined or separate token limits"
            )
        return self


class BatchParams(CommonParams):
    #: requests per provider batch; ``None`` (or Curator's ``"auto"``, read as ``None``) is as
    #: many as the provider's per-batch limits of requests and bytes allow
    batch_size: int | None = Field(None, gt=0)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _auto_batch_size(cls, value: Any) -> Any:
        if value == "auto":
            return None
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError(f"must be a positive integer or 'auto', got {value!r}")
        return value

    batch_check_interval: float = Field(60.0, gt=0)
    delete_successful_batch_files: bool = False
    delete_failed_batch_files: bool = False
    completion_window: str = "24h"
    max_tokens: int | None = Field(None, gt=0)
    #: the provider's batch queue limits, to pace submission up front (see curator_flows.batch
    #: .queue): input tokens (OpenAI's enqueued token limit) / requests (Anthropic's processing
    #: queue) the run's live batches may hold at once; limits, so never part of a run's identity
    max_enqueued_tokens: int | None = Field(None, gt=0)
    max_enqueued_requests: int | None = Field(None, gt=0)


class OfflineParams(CommonParams):
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = False
    max_model_length: int | None = Field(None, gt=0)
    max_tokens: int = Field(1024, gt=0)
    min_tokens: int = Field(0, ge=0)
    gpu_memory_utilization: float = Field(0.95, gt=0, le=1)
    batch_size: int = Field(256, ge=1)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _token_range(self) -> OfflineParams:
        if self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) exceeds max_tokens ({self.max_tokens})"
            )
        return self


_PARAMS_BY_MODE: dict[str, type[CommonParams]] = {
    "online": OnlineParams,
    "batch": BatchParams,
    "offline": OfflineParams,
}

# Keys that change a response's content; everything else (limits, retries, paths, keys) doesn't.
# ``invalid_finish_reasons`` changes which answers are accepted, not what the model returns:
# every finalize (and every cache hit) judges the stored answers again.
_OUTPUT_KEYS = ("max_tokens", "min_tokens", "max_model_length")
# vLLM engine arguments that only size or place the engine; every other one (dtype,
# quantization, seed, chat_template, ...) may change outputs and is fingerprinted.
_RESOURCE_ENGINE_KWARGS = frozenset(
    {
        "kv_cache_memory_bytes", "max_num_seqs", "max_num_batched_tokens", "swap_space",
        "cpu_offload_gb", "disable_log_stats", "enable_prefix_caching", "download_dir",
        "enable_chunked_prefill", "block_size",
    }
)  # fmt: skip


class BackendConfig:
    """The validated ``backend_params`` of one mode."""

    def __init__(self, mode: Mode, params: CommonParams) -> None:
        self.mode = mode
        self.params = params

    @classmethod
    def from_user(cls, mode: Mode, backend_params: dict[str, Any] | None) -> BackendConfig:
        """Validate ``backend_params`` for ``mode``; raise :class:`ConfigError` on any problem."""
        model = _PARAMS_BY_MODE[mode]
        raw = dict(backend_params or {})
        if not isinstance(backend_params, dict | type(None)):
            raise ConfigError(f"backend_params must be a dict, got {type(backend_params).__name__}")
        allowed = sorted(model.model_fields)
        unknown = sorted(k for k in raw if k not in model.model_fields)
        if unknown:
            raise ConfigError(
                f"unknown backend_params key(s) {unknown} for {mode} mode; allowed keys: {allowed}"
            )
        try:
            return cls(mode, model(**raw))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'backend_params'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid backend_params for {mode} mode: {problems}") from None

    def __getattr__(self, name: str) -> Any:
        if name == "params" or name.startswith("__"):  # not set yet: an unpickling copy
            raise AttributeError(name)
        return getattr(self.params, name)

    def api_key(self) -> str | None:
        key = self.params.api_key
        return key.get_secret_value() if key is not None else None

    def output_params(self) -> dict[str, Any]:
        """Parameters that change responses; safe to fingerprint (no secrets, no limits)."""
        out = {}
        for key in _OUTPUT_KEYS:
            if key in type(self.params).model_fields:
                value = getattr(self.params, key)
                out[key] = list(value) if isinstance(value, tuple) else value
        engine = getattr(self.params, "engine_kwargs", None)
        if engine:
            out["engine_kwargs"] = {
                k: v for k, v in engine.items() if k not in _RESOURCE_ENGINE_KWARGS
            }
        return out

    def public_dict(self) -> dict[str, Any]:
        """Every set parameter except the API key; safe for manifests, logs and XCom."""
        data = self.params.model_dump(mode="json", exclude={"api_key"})
        return data
