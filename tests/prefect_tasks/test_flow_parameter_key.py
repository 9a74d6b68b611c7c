"""An LLM holding its API key in ``backend_params`` is a parameter of a plain Prefect flow: its
stored parameters, its parameter schema and its persisted results hold no key, and the key
still reaches the provider (a simulator that requires it)."""

from __future__ import annotations

import json

from curator_flows import LLM

KEY = "sk-prefect-llm-key-5d81e0"


class Topic(LLM):
    def prompt(self, input):
        return f"topic {input['t']}"

    def parse(self, input, response):
        return {"t": input["t"], "response": response}


def test_a_flow_parameter_llm_keeps_its_key_out_of_what_prefect_stores(
    prefect_server, sim, tmp_path, storage_dir
):
    from prefect import flow, task
    from prefect.utilities.callables import parameter_schema
    from prefect_api import flow_run, flow_run_id

    sim.configure(require_api_key=KEY)
    llm = Topic("gpt-4o-mini", backend_params={"api_key": KEY, "base_url": sim.base_url})

    @task(persist_result=True)
    def generate(llm: LLM, rows: int, working_dir: str) -> dict:
        result = llm([{"t": i} for i in range(rows)], working_dir=working_dir)
        return {"succeeded": result.request_stats.succeeded, "llm": llm}  # pickled result

    @flow(persist_result=True)
    def build(llm: LLM = llm, rows: int = 3, working_dir: str = "") -> dict:
        return generate(llm, rows, working_dir)

    state = build(llm=llm, rows=3, working_dir=str(tmp_path / "wd"), return_state=True)
    assert state.is_completed() and state.result()["succeeded"] == 3
    stored = flow_run(flow_run_id(state)).parameters
    assert KEY not in json.dumps(stored, default=str)
    assert KEY not in json.dumps(build.serialize_parameters({"llm": llm}), default=str)
    assert KEY not in parameter_schema(build.fn).model_dump_json()
    persisted = b"".join(p.read_bytes() for p in storage_dir.rglob("*") if p.is_file())
    assert persisted and KEY.encode() not in persisted
