"""The Prefect flows publish only when at most ``max_failed_fraction`` of the requests failed
(a temporary Prefect server, the simulator over real HTTP)."""

from __future__ import annotations

from pathlib import Path

from flow_llms import Numbered

from curator_flows import TooManyFailuresError
from curator_flows.publish import read_marker


def test_a_flow_publishes_nothing_past_max_failed_fraction(prefect_server, sim, wd, tmp_path):
    from prefect_tasks import curate

    output_uri = str(tmp_path / "published" / "numbers")
    llm = Numbered(
        "gpt-4o-mini",
        backend_params={"base_url": sim.base_url, "progress": "off", "max_retries": 0},
    )
    rows = [{"n": i} for i in range(40)]
    arguments = {"credentials": {"api_key": "sk-test"}, "output_uri": output_uri}
    sim.configure(faults={"500": 0.3})  # about 30% of the requests fail
    state = curate(llm, rows, wd, **arguments, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, TooManyFailuresError) and error.retryable
    failed = sim.stats()["status_counts"]["500"]
    assert error.failures_by_reason == {"http_500": failed} and 6 <= failed <= 20
    assert not (Path(output_uri) / "_SUCCESS").exists()  # nothing published

    # under a threshold the share fits: published (the shards' results are reused)
    summary = curate(llm, rows, wd, **arguments, max_failed_fraction=0.5)
    assert summary["failed"] == failed and summary["failures_by_reason"] == {"http_500": failed}
    assert read_marker(output_uri, {})["rows"] == 40 - failed

    # the provider recovered: retry_failed sends exactly the failed ones, all 40 published
    sim.configure(faults=None)
    before = sim.stats()["chat_completions"]
    summary = curate(llm, rows, wd, **arguments, retry_failed=True)
    assert summary["failed"] == 0 and sim.stats()["chat_completions"] - before == failed
    assert read_marker(output_uri, {})["rows"] == 40
