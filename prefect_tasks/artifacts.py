"""What people see in the Prefect UI: a progress artifact per shard, updated while the shard
runs, and at the end a table of the run's statistics with a link to the published dataset and
a preview table of its first rows; the dataset itself is declared as a Prefect asset.

Invariants:
- artifacts hold counts, tokens, cost, times and URIs, and the preview holds the first
  :data:`PREVIEW_ROWS` rows of the published dataset (texts cut): never prompts or keys;
- progress is read from the run directory (``steps.status`` of the shard alone: its own files,
  never the other shards') on a background thread at most every ``interval`` seconds, so it
  costs the step nothing per request; a failure to read or to write an artifact is logged and
  never fails a step.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from typing import Any

from curator_flows import steps
from curator_flows.credentials import Credentials
from curator_flows.results import BatchShardState, FinalizeResult

from .policy import run_id_of, slug

log = logging.getLogger("prefect_tasks.artifacts")

#: seconds between two progress updates of a running shard
PROGRESS_INTERVAL = 5.0
#: rows of the published dataset in the preview table
PREVIEW_ROWS = 20


def progress_key(run: Any, shard: str) -> str:
    return slug(f"curator-progress-{run_id_of(run)}-{shard}")


def _safely(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # the UI is a view: it never fails the work
        log.warning("could not %s: %s", what, exc)
        return None


class ShardProgress:
    """A progress artifact for ``shard`` of ``run``, kept current while the ``with`` block
    runs (a thread re-reads the run's status every ``interval`` seconds)."""

    def __init__(
        self,
        run: Any,
        shard: str,
        credentials: Credentials | None = None,
        interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.run = run
        self.shard = shard
        self.credentials = credentials
        self.interval = interval
        self.artifact_id: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ShardProgress:
        from prefect.artifacts import create_progress_artifact

        percent, text = self._read() or (0.0, f"shard {self.shard}: starting")
        self.artifact_id = _safely(
            "create the progress artifact",
            create_progress_artifact,
            progress=percent,
            key=progress_key(self.run, self.shard),
            description=text,
        )
        if self.artifact_id is not None and self.interval > 0:
            context = contextvars.copy_context()  # the Prefect settings and client of this run
            self._thread = threading.Thread(
                target=context.run,
                args=(self._loop,),
                name=f"curator-progress-{self.shard}",
                daemon=True,
            )
            self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.update()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.update()

    def _read(self) -> tuple[float, str] | None:
        status = _safely(
            "read the shard's status",
            steps.status,
            self.run,
            self.shard,
            credentials=self.credentials,
        )
        if status is None:
            return None
        for entry in status["shards"]:
            if entry["shard"] == self.shard:
                total = entry["requests"] or 0
                finished = entry["succeeded"] + entry["failed"]
                percent = 100.0 * finished / total if total else 100.0
                return percent, (
                    f"shard {self.shard}: {finished}/{total} requests, {entry['failed']} failed, "
                    f"{entry['input_tokens']}+{entry['output_tokens']} tokens, "
                    f"${entry['cost']:.4f}"
                )
        return None

    def update(self) -> None:
        if self.artifact_id is None:
            return
        from prefect.artifacts import update_progress_artifact

        read = self._read()
        if read is not None:
            _safely(
                "update the progress artifact",
                update_progress_artifact,
                self.artifact_id,
                progress=read[0],
                description=read[1],
            )


class BatchProgress:
    """A progress artifact for a batch shard, updated from each poll's request counts."""

    def __init__(self, run: Any, shard: str) -> None:
        self.run = run
        self.shard = shard
        self.artifact_id: Any = None

    def update(self, state: BatchShardState) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        counts = state.get("request_counts") or {}
        total = int(counts.get("total") or state.get("requests") or 0)
        finished = sum(
            int(counts.get(k) or 0)
            for k in ("completed", "failed", "succeeded", "errored", "canceled", "expired")
        )
        percent = min(100.0, 100.0 * finished / total) if total else 0.0
        if state.get("done"):
            percent = 100.0
        text = (
            f"shard {self.shard}: batch {state.get('batch_id')} {state.get('status')}, "
            f"{finished}/{total} requests"
        )
        if self.artifact_id is None:
            self.artifact_id = _safely(
                "create the progress artifact",
                create_progress_artifact,
                progress=percent,
                key=progress_key(self.run, self.shard),
                description=text,
            )
        else:
            _safely(
                "update the progress artifact",
                update_progress_artifact,
                self.artifact_id,
                progress=percent,
                description=text,
            )


def summary_table(summary: FinalizeResult) -> list[dict[str, Any]]:
    """The run's statistics as ``metric`` / ``value`` rows."""
    stats = summary["statistics"]
    tokens, cost = stats["token_usage"], stats["cost_info"]
    requests, perf = stats["request_stats"], stats["performance_stats"]
    seconds = float(perf.get("total_time") or 0.0)
    total_tokens = int(tokens.get("input") or 0) + int(tokens.get("output") or 0)
    rows = [
        ("rows", summary["rows"]),
        ("requests", summary["requests"]),
        ("succeeded", summary["succeeded"]),
        ("failed", summary["failed"]),
        ("cached (reused, not paid)", requests.get("cached", 0)),
        ("input tokens", tokens.get("input", 0)),
        ("output tokens", tokens.get("output", 0)),
        ("cost ($)", round(float(cost.get("total_cost") or 0.0), 6)),
        ("time (s)", round(seconds, 2)),
        ("throughput (requests/min)", round(float(perf.get("requests_per_minute") or 0.0), 1)),
        ("throughput (tokens/s)", round(total_tokens / seconds, 1) if seconds > 0 else 0.0),
        ("run", summary["run_uri"]),
        ("output", summary.get("output_uri") or "(not published)"),
        ("failed requests", summary.get("failed_requests_uri") or "(none)"),
    ]
    return [{"metric": name, "value": value} for name, value in rows]


def summary_key(name: str) -> str:
    return slug(f"curator-{name}")


def report(summary: FinalizeResult, key: str) -> None:
    """The final table artifact (and a link artifact to the published dataset) under ``key``:
    one key per dataset, so the Artifacts page shows every night's build in one history."""
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    description = (
        f"curator-flows run {summary['run_id']}: {summary['rows']} rows, "
        f"{summary['failed']} failed requests"
    )
    _safely(
        "create the summary table",
        create_table_artifact,
        table=summary_table(summary),
        key=key,
        description=description,
    )
    output = summary.get("output_uri")
    if output:
        _safely(
            "create the output link",
            create_link_artifact,
            link=output,
            link_text=output,
            key=f"{key}-output",
            description=f"The published dataset (Parquet) of run {summary['run_id']}",
        )
    elif summary.get("run_uri"):
        _safely(
            "create the run note",
            create_markdown_artifact,
            markdown=f"Dataset files (Arrow IPC) under `{summary['run_uri']}/output/`",
            key=f"{key}-output",
        )


def preview(summary: FinalizeResult, key: str, credentials: Any = None) -> None:
    """A table artifact of the first :data:`PREVIEW_ROWS` rows of the published dataset, under
    ``<key>-preview`` (nothing when the run was not published)."""
    from prefect.artifacts import create_table_artifact

    from .resolve import resolve_credentials

    output = summary.get("output_uri")
    if not output:
        return
    rows = _safely(
        "read the published rows",
        lambda: steps.preview(output, PREVIEW_ROWS, credentials=resolve_credentials(credentials)),
    )
    if rows is None:
        return
    _safely(
        "create the preview table",
        create_table_artifact,
        table=rows,
        key=f"{key}-preview",
        description=f"The first {len(rows)} rows of {output} (texts cut at 500 characters)",
    )


def asset_key(uri: str | None) -> str | None:
    """``uri`` as a Prefect asset key (local paths become ``file://`` URIs); ``None`` when
    Prefect would refuse it."""
    if not uri:
        return None
    if "://" not in uri:
        uri = "file://" + os.path.abspath(os.path.expanduser(uri))
    try:
        from prefect.assets import Asset

        return Asset(key=uri.rstrip("/")).key
    except Exception as exc:
        log.info("%s cannot be a Prefect asset key (%s); no asset declared", uri, exc)
        return None
