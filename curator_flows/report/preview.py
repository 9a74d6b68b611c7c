"""The first rows of a published dataset (or a finalized run's output), for people.

Invariants:
- rows are read as every dataset reader reads a published output
  (:func:`curator_flows.inputs.iter_uri`: exactly the files its ``_SUCCESS`` marker lists, in
  order), a chunk at a time, and reading stops after ``rows``;
- every value is plain JSON (:func:`~curator_flows.report.cells.shown`), texts cut at
  ``cell_chars`` characters, so a preview is small whatever the rows hold.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..inputs import iter_uri
from .cells import shown

#: rows in a preview, and characters of one text shown
PREVIEW_ROWS = 20
PREVIEW_CELL_CHARS = 500


def preview_rows(
    uri: str,
    rows: int = PREVIEW_ROWS,
    storage_options: dict[str, Any] | None = None,
    *,
    cell_chars: int = PREVIEW_CELL_CHARS,
) -> list[dict[str, Any]]:
    """The first ``rows`` rows stored at ``uri`` (a published output or a run directory), as
    JSON values with texts cut at ``cell_chars``."""
    out: list[dict[str, Any]] = []
    if rows <= 0:
        return out
    with contextlib.closing(iter_uri(uri, storage_options)) as stream:
        for row in stream:
            value = shown(row, cell_chars)
            out.append(value if isinstance(value, dict) else {"value": value})
            if len(out) >= rows:
                break
    return out
