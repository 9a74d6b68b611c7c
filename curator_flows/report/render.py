"""The run page as one self-contained HTML document: served live by
:mod:`curator_flows.viewer`, or written once, static, as ``_report.html`` beside a published
dataset.

Invariants:
- the document loads nothing from anywhere: its CSS and script are inline, and its Content
  Security Policy allows only those two (by their SHA-256) and, live, requests to the page's
  own origin; no font, image, frame or form target;
- data reaches the document only as JSON inside ``<script type="application/json">``
  (:func:`~curator_flows.report.cells.embed_json`: nothing in it can close the element), and
  the script puts every value into the page as text, never as markup: a response holding
  ``<script>`` shows as those characters;
- a static report embeds a bounded sample (the first :data:`SAMPLE_ROWS` requests, texts cut at
  :data:`SAMPLE_CELL_CHARS` characters, at most :data:`SAMPLE_MAX_BYTES` of rows) with the
  run's counts, statistics and failures, and says on the page that it is a sample;
- :func:`write_report` never raises: a report that cannot be made is logged (WARNING) and the
  publish that asked for it stands as it is.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from .cells import dumps, embed_json, shown
from .reader import RunView

if TYPE_CHECKING:
    from ..store import RunStore

log = logging.getLogger(__name__)

#: the static report's name beside the published data
#: (``_``-prefixed: every listing reader, ``pq.read_table(dir)``, Spark, Hive, skips it, as it
#: skips ``_SUCCESS``)
REPORT_NAME = "_report.html"
#: what a static report embeds at most
SAMPLE_ROWS = 1_000
SAMPLE_CELL_CHARS = 4_000
SAMPLE_MAX_BYTES = 8 << 20
_ASSETS = ("page.html", "page.css", "page.js")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@functools.cache
def _assets() -> tuple[str, str, str]:
    """The template, its style sheet and its script (package data of this package)."""
    from importlib.resources import files

    folder = files(__package__)
    template, style, script = (folder.joinpath(name).read_text("utf-8") for name in _ASSETS)
    return template, style, script


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def content_security_policy(*, live: bool) -> str:
    """What the page may load and run: its own inline style and script, and (live) requests
    to its own origin; nothing else."""
    _, style, script = _assets()
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'sha256-{_sha256(script)}'",
            f"style-src 'sha256-{_sha256(style)}'",
            "connect-src 'self'" if live else "connect-src 'none'",
            "img-src 'none'",
            "font-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


def page_html(data: dict[str, Any], *, live: bool) -> str:
    """The page showing ``data`` (``{"mode": "live" | "static", "facts": ..., ...}``)."""
    template, style, script = _assets()
    values = {
        "csp": html.escape(content_security_policy(live=live)),
        "title": html.escape(f"curator-flows · run {data['facts']['run_id']}"),
        "style": style,
        "script": script,
        "data": embed_json(data),
    }
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def final_status(view: RunView, finalized: dict[str, Any] | None) -> dict[str, Any]:
    """The progress part of a static page: the last finalize's counts, or (not finalized)
    each shard's counts from its response lines. As in ``status``, ``succeeded`` counts
    requests with an answer (parse() may have raised on some: the statistics count those as
    failed)."""
    if finalized is None:
        shards = view.shard_counts()
        keys = ("requests", "succeeded", "failed", "pending", "cost")
        totals = {key: sum(shard[key] for shard in shards) for key in keys}
        for key in ("input_tokens", "output_tokens"):
            totals[key] = sum(shard[key] for shard in shards)
        return {"totals": totals, "shards": shards, "finalized": False, "cancelled": False}
    requests = finalized.get("request_stats") or {}
    tokens = finalized.get("token_usage") or {}
    parse_failures = int(finalized.get("parse_failures") or 0)  # answered, then not parsed
    totals = {
        "requests": requests.get("total", view.requests),
        "succeeded": requests.get("succeeded", 0) + parse_failures,
        "failed": requests.get("failed", 0) - parse_failures,
        "pending": 0,  # finalize counts a request without an answer as failed (not_sent)
        "cost": (finalized.get("cost_info") or {}).get("total_cost", 0.0),
        "input_tokens": tokens.get("input", 0),
        "output_tokens": tokens.get("output", 0),
    }
    return {"totals": totals, "shards": None, "finalized": True, "cancelled": False}


def static_data(
    view: RunView,
    marker: dict[str, Any] | None = None,
    output_uri: str | None = None,
    *,
    sample_rows: int = SAMPLE_ROWS,
    cell_chars: int = SAMPLE_CELL_CHARS,
    max_bytes: int = SAMPLE_MAX_BYTES,
) -> dict[str, Any]:
    """What a static report embeds (see the module docstring); ``marker``: the ``_SUCCESS``
    marker of the publish it sits beside, at ``output_uri``."""
    finalized = view.finalized()
    kept: list[dict[str, Any]] = []
    size = 0
    cut = False
    for row in view.rows(0, sample_rows, cell_chars):
        size += len(dumps(row))
        if size > max_bytes:
            cut = True
            break
        kept.append(row)
    published = None
    if marker is not None:
        published = shown(
            {
                "output_uri": output_uri,
                "rows": marker.get("rows"),
                "files": len(marker.get("files") or []),
                "published_at": marker.get("published_at"),
                "publish_id": marker.get("publish_id"),
            }
        )
    return {
        "mode": "static",
        "generated_at": time.time(),
        "facts": view.facts(),
        "status": final_status(view, finalized),
        "finalized": finalized,
        "published": published,
        "failures": view.failures(),
        "sample": {
            "rows": kept,
            "of": view.requests,
            "limit": sample_rows,
            "cell_chars": cell_chars,
            "cut_by_size": cut,
        },
    }


def render_report(
    run_uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    marker: dict[str, Any] | None = None,
    output_uri: str | None = None,
) -> str:
    """The static report of the run at ``run_uri`` (HTML text)."""
    view = RunView(run_uri, storage_options)
    return page_html(static_data(view, marker, output_uri), live=False)


def write_report(
    run: RunStore,
    target: RunStore,
    marker: dict[str, Any] | None,
    *,
    only_if_missing: bool = False,
) -> str | None:
    """Write ``_report.html`` of the run at ``run`` into ``target`` (the published directory
    ``marker`` describes), whole or not at all; return its URI, or ``None`` when it was not
    written (``only_if_missing`` and it exists, or it failed: logged, never raised)."""
    try:
        if only_if_missing and target.exists(REPORT_NAME):
            return None
        text = render_report(run.uri, run.storage_options, marker=marker, output_uri=target.uri)
        target.write_bytes(REPORT_NAME, text.encode("utf-8"))
    except Exception as exc:  # noqa: BLE001 - a page for people never fails a publish
        log.warning(
            "could not write %s/%s (the published dataset is complete without it): %s: %s",
            target.uri,
            REPORT_NAME,
            type(exc).__name__,
            exc,
        )
        return None
    return f"{target.uri}/{REPORT_NAME}"
