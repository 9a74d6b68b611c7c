"""What people see in the Prefect UI: one progress artifact per flow run holding a row per shard,
updated while the shards run, and at the end a table of the run's statistics, a note (or a
link) to the published dataset and a preview table of its first rows; the dataset itself is
declared as a Prefect asset.

Invariants:
- artifacts hold counts, tokens, cost, times and URIs, and the preview holds the first
  :data:`PREVIEW_ROWS` rows of the published dataset (texts cut): never prompts or keys;
- a flow keeps ONE keyed progress artifact per flow run, under its dataset's key
  (:func:`progress_key`): each night's build is a new version of the same key (one card on the
  Artifacts page, the nights as its history), never a key per run or per shard;
- progress is read from the run directory (``steps.status`` of the shard alone: its own files,
  never the other shards') on a background thread at most every ``interval`` seconds, so it
  costs the step nothing per request; the whole run is read once, when the flow opens its
  progress artifact; a failure to read or to write an artifact is logged and never fails a step;
- a shard task that finds no progress artifact of its flow in its process (called on its own,
  or run by another process: a shard flow run on a GPU pool) keeps an unkeyed progress artifact
  of its own, which stays with its flow run and adds nothing to the Artifacts page.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import weakref
from typing import Any, ClassVar

from curator_flows import steps
from curator_flows.credentials import Credentials
from curator_flows.results import BatchShardState, FinalizeResult

from .policy import run_id_of, slug

log = logging.getLogger("prefect_tasks.artifacts")

#: seconds between two progress updates of a running shard
PROGRESS_INTERVAL = 5.0
#: rows of the published dataset in the preview table
PREVIEW_ROWS = 20
#: the request counts a provider batch reports as finished
_BATCH_FINISHED = ("completed", "failed", "succeeded", "errored", "canceled", "expired")


def progress_key(artifact_key: str) -> str:
    """The key of the progress artifact of the dataset whose summary table is ``artifact_key``."""
    return slug(f"{artifact_key}-progress")


def _safely(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # the UI is a view: it never fails the work
        log.warning("could not %s: %s", what, exc)
        return None


def _row_of(entry: dict[str, Any]) -> dict[str, Any]:
    """A shard's row from its ``steps.status`` entry."""
    row = {
        "state": entry["state"],
        "finished": entry["succeeded"] + entry["failed"],
        "total": entry["requests"] or 0,
        "failed": entry["failed"],
        "tokens": f"{entry['input_tokens']}+{entry['output_tokens']}",
        "cost": float(entry["cost"] or 0.0),
    }
    batch = entry.get("batch")
    if batch:
        row["batch"] = f"{batch.get('batch_id') or '-'} {batch.get('status') or ''}".strip()
    return row


def _shard_status(run: Any, shard: str, credentials: Credentials | None) -> dict | None:
    status = _safely("read the shard's status", steps.status, run, shard, credentials=credentials)
    if status is None:
        return None
    return next((e for e in status["shards"] if e["shard"] == shard), None)


def _percent(finished: int, total: int) -> float:
    return min(100.0, 100.0 * finished / total) if total else 100.0


class RunProgress:
    """The progress artifact of one flow run: the bar counts the run's finished requests, the
    description is a table with a row per shard. Shard tasks in this process find it by its id
    (:meth:`find`) and update their rows; it lives as long as the flow holds it."""

    _open: ClassVar[weakref.WeakValueDictionary[str, RunProgress]] = weakref.WeakValueDictionary()

    def __init__(self, run: Any, key: str, rows: dict[str, dict[str, Any]]) -> None:
        self.run_id = run_id_of(run)
        self.run_key = run.get("run_key") if isinstance(run, dict) else None
        self.key = key
        self.rows = rows
        self.note = ""
        self.artifact_id: Any = None
        self._lock = threading.Lock()

    @classmethod
    def start(
        cls, run: Any, artifact_key: str, credentials: Credentials | None = None
    ) -> RunProgress | None:
        """Read the run's status once and create this flow run's version of the dataset's
        progress artifact; ``None`` when either fails (logged)."""
        status = _safely("read the run's status", steps.status, run, credentials=credentials)
        if status is None:
            return None
        board = cls(
            run, progress_key(artifact_key), {e["shard"]: _row_of(e) for e in status["shards"]}
        )
        from prefect.artifacts import create_progress_artifact

        percent, text = board._render()
        board.artifact_id = _safely(
            "create the progress artifact",
            create_progress_artifact,
            progress=percent,
            key=board.key,
            description=text,
        )
        if board.artifact_id is None:
            return None
        cls._open[board.id] = board
        return board

    @property
    def id(self) -> str:
        return str(self.artifact_id)

    @classmethod
    def find(cls, board_id: str | None) -> RunProgress | None:
        """The flow's progress artifact ``board_id`` when its flow runs in this process."""
        return cls._open.get(str(board_id)) if board_id else None

    def set_row(self, shard: str, **values: Any) -> None:
        """Update ``shard``'s row and publish the artifact."""
        with self._lock:
            self.rows.setdefault(shard, {}).update(values)
            self._publish()

    def finish(self, note: str) -> None:
        with self._lock:
            self.note = note
            self._publish()

    def _publish(self) -> None:
        _update_progress(self.artifact_id, *self._render())

    def _render(self) -> tuple[float, str]:
        rows = self.rows
        finished = sum(r.get("finished", 0) for r in rows.values())
        total = sum(r.get("total", 0) for r in rows.values())
        failed = sum(r.get("failed", 0) for r in rows.values())
        cost = sum(r.get("cost", 0.0) for r in rows.values())
        key = f" (run key {self.run_key})" if self.run_key else ""
        head = (
            f"Run `{self.run_id}`{key}: {finished}/{total} requests, {failed} failed, "
            f"${cost:.4f}. {self.note}"
        ).strip()
        batch = any("batch" in r for r in rows.values())
        columns = ["shard", "state", "requests", "failed", "tokens (in+out)", "cost ($)"]
        columns += ["batch"] if batch else []
        lines = [head, "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        for shard in sorted(rows):
            r = rows[shard]
            cells = [
                shard,
                str(r.get("state", "")),
                f"{r.get('finished', 0)}/{r.get('total', 0)}",
                str(r.get("failed", 0)),
                str(r.get("tokens", "")),
                f"{r.get('cost', 0.0):.4f}",
            ]
            cells += [str(r.get("batch", ""))] if batch else []
            lines.append("| " + " | ".join(cells) + " |")
        return _percent(finished, total), "\n".join(lines)


class _OwnArtifact:
    """An unkeyed progress artifact of one shard (see the module invariants)."""

    def __init__(self, shard: str) -> None:
        self.shard = shard
        self.artifact_id: Any = None

    def show(self, percent: float, text: str) -> None:
        from prefect.artifacts import create_progress_artifact

        if self.artifact_id is None:
            self.artifact_id = _safely(
                "create the progress artifact",
                create_progress_artifact,
                progress=percent,
                description=text,
            )
        else:
            _update_progress(self.artifact_id, percent, text)


def _update_progress(artifact_id: Any, percent: float, text: str) -> None:
    from prefect.artifacts import update_progress_artifact

    _safely(
        "update the progress artifact",
        update_progress_artifact,
        artifact_id,
        progress=percent,
        description=text,
    )


class ShardProgress:
    """Keeps ``shard``'s progress current while the ``with`` block runs (a thread re-reads the
    shard's status every ``interval`` seconds): its row of the flow's progress artifact
    ``board_id``, else an unkeyed artifact of its own (unless ``own_artifact`` is off: a shard
    that runs as a flow run elsewhere keeps its own there)."""

    def __init__(
        self,
        run: Any,
        shard: str,
        credentials: Credentials | None = None,
        interval: float = PROGRESS_INTERVAL,
        board_id: str | None = None,
        *,
        own_artifact: bool = True,
    ) -> None:
        self.run = run
        self.shard = shard
        self.credentials = credentials
        self.interval = interval
        self.board = RunProgress.find(board_id)
        self.own = _OwnArtifact(shard) if self.board is None and own_artifact else None
        self._running = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ShardProgress:
        if self.board is None and self.own is None:
            return self
        self._running = True
        self.update()
        if self.interval > 0:
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
        if self._running:
            self._running = False
            self.update()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.update()

    def update(self) -> None:
        entry = _shard_status(self.run, self.shard, self.credentials)
        if entry is None:
            return
        row = _row_of(entry)
        if self._running and entry["pending"] and "batch" not in entry:
            row["state"] = "running"  # batch shards say where their batch is instead
        if self.board is not None:
            self.board.set_row(self.shard, **row)
        elif self.own is not None:
            self.own.show(
                _percent(row["finished"], row["total"]),
                f"shard {self.shard}: {row['finished']}/{row['total']} requests, "
                f"{row['failed']} failed, {row['tokens']} tokens, ${row['cost']:.4f}",
            )


class BatchProgress:
    """A batch shard's progress from each poll's request counts: its row of the flow's progress
    artifact ``board_id``, else an unkeyed artifact of its own."""

    def __init__(self, run: Any, shard: str, board_id: str | None = None) -> None:
        self.run = run
        self.shard = shard
        self.board = RunProgress.find(board_id)
        self.own = _OwnArtifact(shard) if self.board is None else None

    def update(self, state: BatchShardState) -> None:
        counts = state.get("request_counts") or {}
        total = int(counts.get("total") or state.get("requests") or 0)
        finished = min(total, sum(int(counts.get(k) or 0) for k in _BATCH_FINISHED))
        batch = f"{state.get('batch_id')} {state.get('status')}"
        if self.board is not None:
            self.board.set_row(
                self.shard, state=state.get("status"), finished=finished, total=total, batch=batch
            )
        else:
            self.own.show(
                _percent(finished, total),
                f"shard {self.shard}: batch {batch}, {finished}/{total} requests",
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


def is_web_url(location: str) -> bool:
    """Whether a browser can open ``location`` from the Prefect UI (``http(s)://``; an
    ``s3://``, ``gs://`` or ``file://`` URI or a local path it cannot)."""
    return location.lower().startswith(("http://", "https://"))


def output_note(summary: FinalizeResult) -> str:
    """Markdown saying where the run's dataset is and how to read it."""
    output = summary.get("output_uri")
    if output:
        return (
            f"Published dataset of run `{summary['run_id']}` ({summary['rows']} rows, Parquet, "
            f"`_SUCCESS` written last):\n\n`{output}`\n\n"
            f"Read it with `pandas.read_parquet({output!r})` (pass `storage_options` for "
            "object stores)."
        )
    return (
        f"Run `{summary['run_id']}` was not published (no `output_uri`): its dataset (Arrow IPC) "
        f"is under `{summary['run_uri']}/output/`; "
        f"`curator_flows.steps.load_response({summary['run_uri']!r})` loads it."
    )


def report(summary: FinalizeResult, key: str) -> None:
    """The final table artifact under ``key`` (one key per dataset, so the Artifacts page shows
    every night's build in one history), and under ``<key>-output`` where the dataset is: a
    link artifact when the UI can open it (an ``http(s)://`` output), else a markdown artifact
    naming the location (a bare ``s3://`` URI or local path is no link a browser follows)."""
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
    if output and is_web_url(output):
        _safely(
            "create the output link",
            create_link_artifact,
            link=output,
            link_text=output,
            key=f"{key}-output",
            description=f"The published dataset (Parquet) of run {summary['run_id']}",
        )
    elif output or summary.get("run_uri"):
        _safely(
            "create the output note",
            create_markdown_artifact,
            markdown=output_note(summary),
            key=f"{key}-output",
            description=(
                f"Dataset of run {summary['run_id']}: `{output}` (Parquet)"
                if output
                else f"Run {summary['run_id']} (not published): `{summary['run_uri']}/output/`"
            ),
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
