"""The outlet asset of a published dataset, known when the DAG is parsed.

Invariant: every operator that publishes (an ``output_uri``) has an asset: ``output_asset=``,
else the location of ``output_uri`` as far as the DAG's params' defaults tell it (a local path as
a ``file://`` URI), else ``curator://<dag_id>/<task_id>`` (see
:meth:`airflow_provider.operators.base.PublishMixin.attach_asset`), so a DAG scheduled on the
dataset is never left waiting for an event that no task emits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Asset

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_PARAM = re.compile(r"^\s*params\s*(?:\.\s*(\w+)|\[\s*['\"]([^'\"]+)['\"]\s*\])\s*$")


def parse_time_location(output_uri: str, params: Mapping[str, Any] | None) -> tuple[str, bool]:
    """``(text, complete)``: ``output_uri`` as far as it is known when the DAG is parsed
    (literal text and ``{{ params.x }}`` replaced by the param's default), up to its first
    other template; ``complete`` when no other template is left."""
    params = params or {}
    known, position = [], 0
    for match in _TEMPLATE.finditer(output_uri):
        known.append(output_uri[position : match.start()])
        reference = _PARAM.match(match.group(1) or "") if match.group(1) is not None else None
        name = (reference.group(1) or reference.group(2)) if reference else None
        try:
            value = params[name] if name is not None and name in params else None
        except Exception:  # noqa: BLE001 - a param without a valid default: not known
            value = None
        if value in (None, ""):
            return "".join(known), False
        known.append(str(value))
        position = match.end()
    known.append(output_uri[position:])
    return "".join(known), True


def asset_uri(location: str) -> str | None:
    """The asset URI of a storage location: a URI as is, an absolute local path as
    ``file://`` (``None``: a relative path, or a bare scheme or root)."""
    location = location.rstrip("/")
    scheme, separator, rest = location.partition("://")
    if separator:
        return location if scheme and rest.strip("/") else None
    if location.startswith("/") and location.strip("/"):
        return f"file://{location}"
    return None


def default_asset(
    output_uri: Any, explicit: Asset | str | None, params: Mapping[str, Any] | None = None
) -> Asset | None:
    """The outlet asset of a published dataset: ``explicit`` (an ``Asset`` or a URI), else the
    location of ``output_uri`` as known when the DAG is parsed (see
    :func:`parse_time_location`): all of it when it is static, else its prefix up to the last
    ``/`` before the first template that is not a param (``s3://b/recipes/{{ run_date }}`` →
    ``s3://b/recipes``, ``{{ params.root }}/recipes/{{ run_date }}`` with ``root`` defaulting
    to ``/data`` → ``file:///data/recipes``), so every night's event lands on one asset whose
    ``extra`` names that night's URI. ``None``: no ``output_uri``, or no location known at
    parse time."""
    from airflow.sdk import Asset

    if explicit is not None:
        return explicit if isinstance(explicit, Asset) else Asset(str(explicit))
    if not isinstance(output_uri, str) or not output_uri:
        return None
    known, complete = parse_time_location(output_uri, params)
    location = known if complete else known.rsplit("/", 1)[0] if "/" in known else ""
    uri = asset_uri(location)
    return Asset(uri) if uri else None
