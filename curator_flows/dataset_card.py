"""The dataset card (``README.md``, Hugging Face's format) written beside published data, so the
folder is ready to share as it is (``datasets.load_dataset(folder)``; ``hf://`` is one more
fsspec URI).

Where: without partitions, in the publish directory, over that publish's files; with
partitions, at the asset root, over every partition (rewritten by each night's publish).

Invariants:
- the YAML header's ``configs`` list **exactly the files the ``_SUCCESS`` markers list**
  (never a glob, which would also match a crashed publish's parts), its
  ``dataset_info.features`` are the schema contract's (:mod:`curator_flows.schema_contract`,
  in ``datasets``' own YAML form) and ``splits[train].num_examples`` their row count, so
  ``datasets`` verifies what it loads against the card;
- the card is a function of the markers and the contract alone (no clock, no listing order),
  so two publishers writing it from the same markers write the same bytes, and a publisher
  whose markers changed while it wrote (another night published at the same time) writes it
  again from the new ones;
- it is written atomically (a local rename, one PUT) and only when its bytes change;
- Hive partition columns (``date``) are not features: ``datasets`` reads the files, not the
  directory names (pyarrow, DuckDB, Spark and Athena add them).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from .store import RunStore

log = logging.getLogger(__name__)

CARD = "README.md"
MARKER = "_SUCCESS"
#: times a partitioned card is rebuilt when partitions change while it is written
_REWRITES = 3


def write_card(target: RunStore, marker: dict[str, Any], schema) -> None:
    """The card of one publish directory, beside its data."""
    files = [entry["path"] for entry in marker["files"]]
    _write_if_changed(target, card_text(schema, files, [("", marker)], partition_keys=[]))


def write_partitioned_card(asset: RunStore, keys: list[str], schema) -> None:
    """The card at the asset root over every partition (``keys``: the partition keys, in
    directory order) that has a marker."""
    for _ in range(_REWRITES):
        markers = _partition_markers(asset, keys)
        files = [
            f"{where}/{entry['path']}" for where, marker in markers for entry in marker["files"]
        ]
        _write_if_changed(asset, card_text(schema, files, markers, partition_keys=keys))
        if _versions(_partition_markers(asset, keys)) == _versions(markers):
            return


def _versions(markers: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    return [(where, marker.get("publish_id", "")) for where, marker in markers]


def _partition_markers(asset: RunStore, keys: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """``(partition directory, marker)`` of every published partition, in directory order."""
    pattern = "/".join(f"{key}=*" for key in keys) + f"/{MARKER}"
    found = []
    for rel in asset.glob(pattern):
        record = asset.read_json_if_exists(rel)
        if isinstance(record, dict) and isinstance(record.get("files"), list):
            found.append((rel.rsplit("/", 1)[0], record))
    return found


def _write_if_changed(store: RunStore, text: str) -> None:
    data = text.encode()
    try:
        if store.read_bytes(CARD) == data:
            return
    except FileNotFoundError:
        pass
    store.write_bytes(CARD, data)


# ----------------------------------------------------------------------------- the text
def features_yaml(schema) -> list[Any]:
    """``dataset_info.features`` of ``schema`` as ``datasets`` writes them in a card."""
    import datasets

    return datasets.Features.from_arrow_schema(schema)._to_yaml_list()


def card_text(
    schema,
    files: list[str],
    markers: list[tuple[str, dict[str, Any]]],
    *,
    partition_keys: list[str],
) -> str:
    """The card: the YAML header, then what made the data (the latest publish), its schema and,
    with partitions, one line per partition."""
    import yaml

    rows = sum(int(marker.get("rows") or 0) for _, marker in markers)
    header = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "train", "path": files}],
            }
        ],
        "dataset_info": {
            "features": features_yaml(schema),
            "splits": [{"name": "train", "num_examples": rows}],
        },
        "tags": ["synthetic", "curator-flows"],
    }
    latest = max(markers, key=lambda item: item[1].get("published_at") or 0.0)[1]
    parts = [
        "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n",
        f"# {_title(latest)}\n",
        _summary(rows, markers, partition_keys),
        "## How it was made" + (" (the latest publish)" if partition_keys else "") + "\n",
        _run_table(latest),
        _schema_section(latest),
    ]
    if partition_keys:
        parts.append(_partitions_table(markers, partition_keys))
    return "\n".join(parts)


def _title(marker: dict[str, Any]) -> str:
    asset = (marker.get("asset_uri") or "").rstrip("/")
    return asset.rsplit("/", 1)[-1] or "dataset"


def _summary(rows: int, markers: list, keys: list[str]) -> str:
    text = f"A synthetic dataset generated with curator-flows: {rows} rows"
    if keys:
        text += (
            f" in {len(markers)} partition(s) by {', '.join(keys)} (Hive layout: "
            f"`{'/'.join(f'{k}=...' for k in keys)}/part-*.parquet`; `datasets` does not add "
            "the partition columns, pyarrow, DuckDB, Spark and Athena do)"
        )
    return text + ".\n"


def _when(epoch: Any) -> str:
    if not epoch:
        return "unknown"
    return dt.datetime.fromtimestamp(float(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _failures(marker: dict[str, Any]) -> str:
    request_stats = (marker.get("statistics") or {}).get("request_stats") or {}
    failed = int(request_stats.get("failed") or 0)
    by_reason = marker.get("failures_by_reason") or {}
    if failed and by_reason:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(by_reason.items()))
        return f"{failed} ({reasons})"
    return str(failed)


def _run_table(marker: dict[str, Any]) -> str:
    run = marker.get("run") or {}
    fingerprints = run.get("fingerprints") or {}
    statistics = marker.get("statistics") or {}
    tokens = statistics.get("token_usage") or {}
    cost = statistics.get("cost_info") or {}
    request_stats = statistics.get("request_stats") or {}
    rows = [
        ("model", run.get("model_name")),
        ("backend / mode", f"{run.get('backend')} / {run.get('mode')}"),
        ("run key", run.get("run_key")),
        ("run", f"`{marker.get('run_id')}`"),
        ("prompts fingerprint (every rendered request)", f"`{fingerprints.get('prompts')}`"),
        ("parse fingerprint", f"`{fingerprints.get('parse')}`"),
        ("requests", request_stats.get("total")),
        ("rows", marker.get("rows")),
        ("failed requests", _failures(marker)),
        ("rows left out (a value the schema refuses)", marker.get("invalid_rows") or 0),
        ("tokens (input / output)", f"{tokens.get('input', 0)} / {tokens.get('output', 0)}"),
        ("cost (USD)", f"{float(cost.get('total_cost') or 0.0):.6f}"),
        ("built", _when(marker.get("published_at"))),
    ]
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in rows]
    return "\n".join(lines) + "\n"


def _schema_section(marker: dict[str, Any]) -> str:
    schema = marker.get("schema") or {}
    lines = [
        f"## Schema (contract generation {schema.get('generation')}, {schema.get('source')})\n",
        "| column | type | nullable |",
        "| --- | --- | --- |",
    ]
    for field in schema.get("fields") or []:
        kind = field["type"] + (" (JSON text)" if field.get("json") else "")
        lines.append(f"| {_cell(field['name'])} | {_cell(kind)} | {field['nullable']} |")
    return "\n".join(lines) + "\n"


def _partitions_table(markers: list, keys: list[str]) -> str:
    lines = [
        "## Partitions\n",
        "| "
        + " | ".join(keys)
        + " | rows | failed | left out | cost (USD) | model | run key | built |",
        "| " + " | ".join("---" for _ in keys) + " | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for where, marker in markers:
        values = dict(segment.split("=", 1) for segment in where.split("/"))
        run = marker.get("run") or {}
        cost = ((marker.get("statistics") or {}).get("cost_info") or {}).get("total_cost")
        cells = [values.get(key, "") for key in keys] + [
            marker.get("rows"),
            _failures(marker),
            marker.get("invalid_rows") or 0,
            f"{float(cost or 0.0):.6f}",
            run.get("model_name"),
            run.get("run_key"),
            _when(marker.get("published_at")),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
