"""Progress lines name their shards: four shards sending at once (parallel Airflow tasks,
mapped Prefect tasks) log lines that can be told apart, over real HTTP against the simulator."""

from __future__ import annotations

import logging
import re
import threading

from curator_flows import LLM, steps
from curator_flows.progress import Progress, shard_label


class Topic(LLM):
    def prompt(self, input: dict) -> str:
        return f"Write one line about {input['topic']}."

    def parse(self, input: dict, response: str) -> dict:
        return {"topic": input["topic"], "text": response}


def test_shard_label_names_a_few_shards_and_summarises_many():
    assert shard_label(["00002"]) == "shard 00002"
    assert shard_label(["00000", "00003"]) == "shards 00000,00003"
    many = [f"{i:05d}" for i in range(50)]
    assert shard_label(many) == "50 shards 00000..00049"


def test_a_progress_line_names_its_shard(caplog):
    progress = Progress("gpt-4o-mini run-1", 10, mode="log", shards=["00003"])
    progress.counters.done = 4
    with caplog.at_level(logging.INFO, logger="curator_flows.progress"):
        progress.close()
    assert caplog.messages and caplog.messages[-1].startswith("gpt-4o-mini run-1 shard 00003 [")


def test_shards_sending_at_once_log_lines_that_name_their_shard(params, wd, caplog):
    """Two shards run at once in two threads (what two orchestrator tasks do): every progress
    line names exactly one shard, and each shard's lines count that shard's requests."""
    llm = Topic("gpt-4o-mini", backend_params=params(progress="log", shard_size=5))
    run = steps.prepare(llm, [{"topic": f"t{i}"} for i in range(10)], wd)
    assert run["shards"] == ["00000", "00001"]
    with caplog.at_level(logging.INFO, logger="curator_flows.progress"):
        threads = [
            threading.Thread(target=steps.run_online, args=(run, shard), kwargs={"llm": llm})
            for shard in run["shards"]
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    lines = [r.getMessage() for r in caplog.records if r.name == "curator_flows.progress"]
    named = [re.search(r" shard (\d{5}) \[", line) for line in lines]
    assert lines and all(named), lines
    assert {m.group(1) for m in named if m} == {"00000", "00001"}
    assert all(" 5/5 " in line for line in lines if "(100%)" in line), lines
