"""OpenLineage facets of a finished CuratorOperator: datasets, a schema facet from the
``response_format`` model, a run facet with requests, tokens and cost."""

from __future__ import annotations

from airflow_llms import FactWriter

from airflow_provider import CuratorOperator
from airflow_provider.lineage import dataset_name, operator_lineage


def test_facets_after_a_run(fsim, curator_conn, tmp_path):
    op = CuratorOperator(
        task_id="facts",
        llm=FactWriter("gpt-4o-mini"),
        dataset=[{"n": i} for i in range(3)],
        working_dir=str(tmp_path),
        conn_id="curator_test",
    )
    assert op.get_openlineage_facets_on_complete(None) is None  # nothing ran yet
    manifest = op.execute({})
    lineage = op.get_openlineage_facets_on_complete(None)
    (output,) = lineage.outputs
    assert (output.namespace, output.name) == ("file", f"{manifest['run_uri']}/output")
    fields = {f.name: f for f in output.facets["schema"].fields}
    assert set(fields) == {"subject", "fact", "sources"}
    assert fields["sources"].type == "array<string>"
    assert fields["subject"].description == "What the fact is about."
    run = lineage.run_facets["curator"]
    assert (run.model, run.backend, run.mode) == ("gpt-4o-mini", "openai", "online")
    assert run.requests == 3 and run.rows == 3 and run.inputTokens == manifest["input_tokens"]
    assert run.cost == manifest["cost"] > 0
    assert lineage.inputs == []  # rows given inline


def test_the_schema_facet_of_a_publish_is_the_assets_contract(fsim, curator_conn, tmp_path):
    op = CuratorOperator(
        task_id="facts",
        llm=FactWriter("gpt-4o-mini"),
        dataset=[{"n": i} for i in range(3)],
        working_dir=str(tmp_path / "runs"),
        output_uri=str(tmp_path / "facts"),
        partition={"date": "2026-12-04"},
        conn_id="curator_test",
    )
    manifest = op.execute({"outlet_events": _OutletEvents()})
    (output,) = op.get_openlineage_facets_on_complete(None).outputs
    assert output.name == str(tmp_path / "facts" / "date=2026-12-04")
    fields = {f.name: f.type for f in output.facets["schema"].fields}
    # what was published (parse() keeps no "sources"), not the response_format's fields
    assert fields == manifest["schema"]["columns"] == {
        "n": "int64", "subject": "string", "fact": "string",
    }  # fmt: skip


class _OutletEvents(dict):
    """``context["outlet_events"]`` outside a task run: an accessor per asset (by URI, as
    Airflow keys them: an Asset is not hashable in Airflow 3.1)."""

    def __getitem__(self, asset):
        from types import SimpleNamespace

        return self.setdefault(asset.uri, SimpleNamespace(extra={}))


def test_dataset_names_follow_openlineage_naming():
    assert dataset_name("s3://bucket/recipes/2026-01-01") == ("s3://bucket", "recipes/2026-01-01")
    assert dataset_name("gs://b/x.parquet") == ("gs://b", "x.parquet")
    assert dataset_name("/data/out") == ("file", "/data/out")
    assert dataset_name("file:///data/out") == ("file", "/data/out")
    lineage = operator_lineage(
        manifest={"run_uri": "/runs/r1", "run_id": "r1", "output_uri": "s3://b/out"},
        input_uri="s3://b/in/cuisines",
        model="m",
        backend="openai",
        mode="batch",
        response_format=None,
    )
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://b", "in/cuisines")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("s3://b", "out")]
