"""Reading a run for people: each request next to the response that stands and the parsed rows
it produced (matched by the origins of the output rows, or row by row when the counts say so),
failures by reason, a not-finalized run."""

from __future__ import annotations

import pytest

from curator_flows import LLM, steps
from curator_flows.report.reader import RunView
from curator_flows.store import RunStore


class Picky(LLM):
    """parse() raises on rows divisible by 4, else one row."""

    def prompt(self, input: dict) -> str:
        return f"item {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        if input["n"] % 4 == 0:
            raise ValueError(f"no good: {input['n']}")
        return {"n": input["n"], "words": len(response.split())}


class Fanout(LLM):
    """parse() makes two rows of even rows, none of odd ones."""

    def prompt(self, input: dict) -> str:
        return f"item {input['n']}"

    def parse(self, input: dict, response: str) -> list[dict]:
        n = input["n"]
        return [{"n": n, "copy": 0}, {"n": n, "copy": 1}] if n % 2 == 0 else []


def test_rows_show_a_parse_failure_and_the_rows_after_it_keep_their_outputs(sim, params, wd):
    llm = Picky("gpt-4o-mini", backend_params=params(shard_size=5))
    run = steps.prepare(llm, [{"n": i} for i in range(10)], wd)
    steps.run_online(run, llm=llm)
    steps.finalize(run, llm=llm)
    rows = RunView(run["run_uri"]).page(1, size=10)["rows"]
    assert [row["status"] for row in rows] == [
        "parse_failed" if n % 4 == 0 else "succeeded" for n in range(10)
    ]
    assert "no good: 4" in rows[4]["error"] and rows[4]["response"]  # the answer is shown
    for row in rows:
        if row["status"] == "succeeded":
            assert row["outputs"] == [{"n": row["row"], "words": len(row["response"].split())}]
        else:
            assert row["outputs"] is None


def test_rows_a_parse_made_many_of_or_none_are_matched_by_their_origins(sim, params, wd):
    llm = Fanout("gpt-4o-mini", backend_params=params(shard_size=4))
    run = steps.prepare(llm, [{"n": i} for i in range(8)], wd)
    steps.run_online(run, llm=llm)
    steps.finalize(run, llm=llm)
    rows = RunView(run["run_uri"]).page(2, size=3)["rows"]  # rows 3, 4, 5: both shards
    assert [row["row"] for row in rows] == [3, 4, 5]
    assert rows[0]["outputs"] == [] and rows[0]["outputs_note"] == "parse() returned no row for it"
    assert rows[1]["outputs"] == [{"n": 4, "copy": 0}, {"n": 4, "copy": 1}]
    assert rows[2]["outputs"] == []

    # finalized by an older version: 4 rows of 4 requests, which counts cannot tell apart from
    # one row each, so nothing is matched rather than the wrong rows
    RunStore(run["run_uri"]).remove("output/origins-00001.arrow")
    rows = RunView(run["run_uri"]).page(2, size=3)["rows"]
    assert rows[0]["outputs"] == []  # shard 00000 still has its origins
    assert rows[1]["outputs"] is None and "finalize again" in rows[1]["outputs_note"]


def test_a_run_not_finalized_shows_answers_without_parsed_rows(sim, params, wd):
    llm = Picky("gpt-4o-mini", backend_params=params(shard_size=5))
    run = steps.prepare(llm, [{"n": i} for i in range(3)], wd)
    steps.run_online(run, llm=llm)
    view = RunView(run["run_uri"])
    assert view.finalized() is None
    rows = view.page()["rows"]
    assert [row["status"] for row in rows] == ["succeeded"] * 3
    assert all(row["outputs"] is None and "not finalized" in row["outputs_note"] for row in rows)


def test_a_directory_without_a_run_is_refused_with_what_to_give(tmp_path):
    from curator_flows.errors import RunNotFoundError

    with pytest.raises(RunNotFoundError, match="manifest.json missing"):
        RunView(str(tmp_path))
