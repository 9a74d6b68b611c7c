"""The preview table artifact: a flow that publishes adds the first rows of the published
dataset, read back through the Prefect client; a flow that does not publish adds none."""

from __future__ import annotations

import json

import prefect_api as api
from flow_llms import Numbered

from curator_flows.publish import published_files


def test_a_publishing_flow_adds_a_preview_of_the_first_rows(prefect_server, sim, wd, tmp_path):
    import pyarrow.parquet as pq

    from prefect_tasks import curate

    output_uri = str(tmp_path / "published")
    llm = Numbered("gpt-4o-mini", backend_params={"base_url": sim.base_url, "shard_size": 10})
    state = curate(
        llm, [{"n": i} for i in range(30)], wd, output_uri=output_uri,
        credentials={"api_key": "sk-test"}, artifact_key="numbers-preview", return_state=True,
    )  # fmt: skip
    assert state.result()["output_uri"] == output_uri

    artifacts = {a.key: a for a in api.artifacts(api.flow_run_id(state))}
    preview = artifacts["numbers-preview-preview"]
    assert preview.type == "table"
    rows = json.loads(preview.data)
    published = [r for f in published_files(output_uri) for r in pq.read_table(f).to_pylist()]
    assert rows == published[:20] and len(rows) == 20
    assert "first 20 rows" in preview.description


def test_a_flow_that_does_not_publish_adds_no_preview(prefect_server, sim, wd):
    from prefect_tasks import curate

    llm = Numbered("gpt-4o-mini", backend_params={"base_url": sim.base_url})
    state = curate(
        llm, [{"n": i} for i in range(3)], wd, credentials={"api_key": "sk-test"},
        artifact_key="numbers-no-preview", return_state=True,
    )  # fmt: skip
    keys = {a.key for a in api.artifacts(api.flow_run_id(state))}
    assert "numbers-no-preview" in keys and "numbers-no-preview-preview" not in keys
