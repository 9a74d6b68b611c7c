"""OpenLineage facets of a finalized run: input and output datasets, the output's schema (the
published asset's schema contract, else the ``response_format`` model), and a ``curator`` run
facet with requests, tokens and cost.

Imported only by ``get_openlineage_facets_on_complete`` (the OpenLineage provider calls it), so
the provider works without the OpenLineage packages. Dataset names follow OpenLineage's naming:
``s3://bucket/key`` → namespace ``s3://bucket``, name ``key``; a local path → namespace
``file``, name the absolute path.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import attr
from airflow.providers.common.compat.openlineage.facet import (
    Dataset,
    RunFacet,
    SchemaDatasetFacet,
    SchemaDatasetFacetFields,
)
from airflow.providers.openlineage.extractors import OperatorLineage

RUN_FACET = "curator"
_JSON_TYPES = {
    "string": "string",
    "integer": "integer",
    "number": "double",
    "boolean": "boolean",
    "array": "array",
    "object": "struct",
}


@attr.define
class CuratorRunFacet(RunFacet):
    """What a run sent and cost."""

    runId: str = attr.field(default="")
    runUri: str = attr.field(default="")
    model: str | None = attr.field(default=None)
    backend: str | None = attr.field(default=None)
    mode: str | None = attr.field(default=None)
    requests: int = attr.field(default=0)
    succeeded: int = attr.field(default=0)
    failed: int = attr.field(default=0)
    rows: int = attr.field(default=0)
    inputTokens: int = attr.field(default=0)
    outputTokens: int = attr.field(default=0)
    cost: float = attr.field(default=0.0)

    @staticmethod
    def _get_schema() -> str:
        return "urn:curator-flows:openlineage:CuratorRunFacet:1"


def dataset_name(uri: str) -> tuple[str, str]:
    """OpenLineage ``(namespace, name)`` of a URI or local path."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # a path (or C:\\...)
        return "file", parsed.path if parsed.scheme == "file" else uri
    namespace = f"{parsed.scheme}://{parsed.netloc}" if parsed.netloc else parsed.scheme
    return namespace, parsed.path.lstrip("/") or "/"


def schema_fields(model: Any) -> list[Any]:
    """Schema facet fields of a pydantic model's JSON schema (nested objects and arrays too)."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if ref and ref.startswith("#/$defs/"):
            return resolve(defs.get(ref.split("/")[-1], {}))
        for key in ("anyOf", "oneOf"):
            options = [o for o in node.get(key, []) if o.get("type") != "null"]
            if len(options) == 1:
                return resolve(options[0])
        return node

    def fields(node: dict[str, Any]) -> list[Any]:
        out = []
        for name, prop in (node.get("properties") or {}).items():
            prop = resolve(prop)
            kind = _JSON_TYPES.get(prop.get("type"), prop.get("type") or "unknown")
            nested: list[Any] = []
            if kind == "struct":
                nested = fields(prop)
            elif kind == "array":
                items = resolve(prop.get("items") or {})
                item_kind = _JSON_TYPES.get(items.get("type"), "unknown")
                kind = f"array<{item_kind}>"
                if item_kind == "struct":
                    nested = fields(items)
            out.append(
                SchemaDatasetFacetFields(
                    name=name,
                    type=kind,
                    description=prop.get("description"),
                    fields=nested,
                )
            )
        return out

    return fields(resolve(schema))


def operator_lineage(
    *,
    manifest: dict[str, Any],
    input_uri: str | None,
    model: str | None,
    backend: str | None,
    mode: str | None,
    response_format: Any,
) -> OperatorLineage:
    """The lineage of one finalized run."""
    inputs = [Dataset(*dataset_name(input_uri))] if input_uri else []
    output_uri = manifest.get("output_uri") or f"{manifest['run_uri']}/output"
    facets = {}
    contract = manifest.get("schema") or {}
    if contract.get("columns"):  # what was published: the asset's schema contract
        facets["schema"] = SchemaDatasetFacet(
            fields=[
                SchemaDatasetFacetFields(name=name, type=kind)
                for name, kind in contract["columns"].items()
            ]
        )
    elif response_format is not None and hasattr(response_format, "model_json_schema"):
        facets["schema"] = SchemaDatasetFacet(fields=schema_fields(response_format))
    outputs = [Dataset(*dataset_name(output_uri), facets=facets)]
    run = CuratorRunFacet(
        runId=manifest.get("run_id") or "",
        runUri=manifest.get("run_uri") or "",
        model=model,
        backend=backend,
        mode=mode,
        requests=int(manifest.get("requests") or 0),
        succeeded=int(manifest.get("succeeded") or 0),
        failed=int(manifest.get("failed") or 0),
        rows=int(manifest.get("rows") or 0),
        inputTokens=int(manifest.get("input_tokens") or 0),
        outputTokens=int(manifest.get("output_tokens") or 0),
        cost=float(manifest.get("cost") or 0.0),
    )
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets={RUN_FACET: run})
