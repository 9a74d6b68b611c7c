"""The result types of Curator's API: statistics and :class:`CuratorResponse`.

Statistics are plain dataclasses so they serialise to the run directory's ``stats.json`` and back
without loss (``to_dict`` / ``from_dict``). Their leading fields are Curator's, in Curator's
order, so code that builds them positionally or by keyword (``TokenUsage(input=, output=,
total=)``) works unchanged; ours follow.

``Image`` and ``File`` (Curator's ``curator.types`` for multimodal prompts) exist so code written
for Curator fails where it builds one, with a ``NotSupportedError`` saying what to send instead
(see :mod:`curator_flows.unsupported`).

``CuratorResponse.dataset`` is a ``datasets.Dataset``; a response made from a run directory
holds the output's Arrow table and builds the ``Dataset`` around it on first access (importing
``datasets`` costs more than a whole fast run), then keeps it. Pickling a response builds it
first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from .unsupported import File, Image, not_supported

__all__ = [
    "CostInfo", "CuratorResponse", "File", "Image", "PerformanceStats", "RequestStats",
    "RunStats", "TokenUsage",
]  # fmt: skip


@dataclass
class TokenUsage:
    input: int = 0
    output: int = 0
    #: ``input + output`` unless given
    total: int | None = None

    def __post_init__(self) -> None:
        if self.total is None:
            self.total = (self.input or 0) + (self.output or 0)


@dataclass
class CostInfo:
    total_cost: float = 0.0
    input_cost_per_million: float | None = None
    output_cost_per_million: float | None = None
    #: what sending the requests still without an answer would cost (estimated)
    projected_remaining_cost: float = 0.0
    batch_discount: bool = False
    #: cost of the responses copied from earlier runs (in ``total_cost``; paid by those runs)
    cached_cost: float = 0.0


@dataclass
class RequestStats:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    #: requests being processed; 0 once a call returns
    in_progress: int = 0
    #: successful responses copied from earlier runs of the same family (not paid by this run)
    cached: int = 0
    #: requests sent for this run so far, by every step and call, retries included
    attempts: int = 0
    rate_limited: int = 0


@dataclass
class PerformanceStats:
    total_time: float = 0.0
    requests_per_minute: float = 0.0
    input_tokens_per_minute: float = 0.0
    output_tokens_per_minute: float = 0.0
    max_concurrent_requests: int = 0
    mean_latency: float = 0.0


_STAT_TYPES = {
    "token_usage": TokenUsage,
    "cost_info": CostInfo,
    "request_stats": RequestStats,
    "performance_stats": PerformanceStats,
}


@dataclass
class RunStats:
    """Everything ``stats.json`` holds."""

    token_usage: TokenUsage = field(default_factory=TokenUsage)
    cost_info: CostInfo = field(default_factory=CostInfo)
    request_stats: RequestStats = field(default_factory=RequestStats)
    performance_stats: PerformanceStats = field(default_factory=PerformanceStats)

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in _STAT_TYPES}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStats:
        return cls(**{name: kind(**data.get(name, {})) for name, kind in _STAT_TYPES.items()})


_UNLOADED: Any = object()


@dataclass
class CuratorResponse:
    """What ``LLM.__call__`` returns: the dataset and its statistics (Curator's fields).

    ``dataset`` may be given as a loader with :meth:`lazy`: it is then built on first access."""

    dataset: Any
    model_name: str
    cache_dir: str | None = None
    failed_requests_path: Path | str | None = None
    viewer_url: str | None = None
    batch_mode: bool = False
    max_requests_per_minute: int | None = None
    max_tokens_per_minute: int | None = None
    token_usage: TokenUsage = field(default_factory=TokenUsage)
    cost_info: CostInfo = field(default_factory=CostInfo)
    request_stats: RequestStats = field(default_factory=RequestStats)
    performance_stats: PerformanceStats = field(default_factory=PerformanceStats)
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def lazy(cls, loader: Callable[[], Any], **fields: Any) -> CuratorResponse:
        """A response whose ``dataset`` is ``loader()``, called on first access."""
        response = cls(dataset=_UNLOADED, **fields)
        response._dataset_loader = loader
        return response

    def _get_dataset(self) -> Any:
        value = self.__dict__.get("_dataset", None)
        if value is _UNLOADED:
            value = self._dataset_loader()
            self.__dict__["_dataset"] = value
            self.__dict__.pop("_dataset_loader", None)
        return value

    def _set_dataset(self, value: Any) -> None:
        self.__dict__["_dataset"] = value

    def __getstate__(self) -> dict[str, Any]:
        self._get_dataset()
        return dict(self.__dict__)

    def get_failed_requests(
        self, storage_options: dict[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The failed requests, one dict per line of ``failed_requests.jsonl`` (each with its
        row, messages and error), streamed; empty when none failed. ``storage_options``
        reach fsspec for a run on an object store."""
        path = self.failed_requests_path
        if path is None:
            return iter(())
        return _iter_jsonl(str(path), storage_options or {})

    def push_to_viewer(self, *args: Any, **kwargs: Any) -> NoReturn:
        """The hosted Curator Viewer is not supported: raises
        :class:`~curator_flows.errors.NotSupportedError` naming ``curator-flows view``."""
        not_supported("push_to_viewer")

    def to_dict(self) -> dict[str, Any]:
        """The response as plain JSON values: the dataset's size and columns (not its rows),
        the model, the statistics and the metadata (Curator's shape)."""
        dataset = self.dataset
        return {
            "dataset": {
                "fingerprint": getattr(dataset, "_fingerprint", None),
                "size": len(dataset) if dataset is not None else 0,
                "columns": list(getattr(dataset, "column_names", None) or []),
            },
            "failed_requests_path": str(self.failed_requests_path)
            if self.failed_requests_path
            else None,
            "model_name": self.model_name,
            "max_requests_per_minute": self.max_requests_per_minute,
            "max_tokens_per_minute": self.max_tokens_per_minute,
            **{name: dataclasses.asdict(getattr(self, name)) for name in _STAT_TYPES},
            "metadata": self.metadata,
        }

    def __repr__(self) -> str:
        loaded = self.__dict__.get("_dataset") is not _UNLOADED
        if loaded:
            rows = len(self.dataset) if self.dataset is not None else 0
        else:
            rows = self.metadata.get("rows", "?")
        return (
            f"CuratorResponse(model_name={self.model_name!r}, rows={rows}, "
            f"succeeded={self.request_stats.succeeded}, failed={self.request_stats.failed}, "
            f"cost=${self.cost_info.total_cost:.4f}, cache_dir={self.cache_dir!r})"
        )


def _iter_jsonl(path: str, storage_options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file finalize wrote whole; a line that is not a JSON object
    raises :class:`~curator_flows.errors.CorruptRunError` naming the file and the line."""
    import fsspec
    import orjson

    from .errors import CorruptRunError

    fs, fs_path = fsspec.core.url_to_fs(path, **storage_options)
    if not fs.exists(fs_path):
        return
    with fs.open(fs_path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                problem = None if isinstance(record, dict) else "not a JSON object"
            except orjson.JSONDecodeError as exc:
                problem = str(exc)
            if problem is not None:
                raise CorruptRunError(
                    f"{path} line {number} is damaged ({problem}): finalize the run again to "
                    "rewrite it from the stored responses (nothing is sent)"
                )
            yield record


# the dataclass's ``dataset`` field, read through a property so a lazy one is built on access
CuratorResponse.dataset = property(  # type: ignore[assignment]
    CuratorResponse._get_dataset, CuratorResponse._set_dataset, doc="A ``datasets.Dataset``."
)
