"""The offline step's bookkeeping with a stand-in generator (no vLLM needed): chunks of
``batch_size``, each stored before the next, resume after a crash, retries of invalid outputs,
requests vLLM rejects, cost, and parameter errors at ``LLM`` construction.

The real engine runs in tests/vllm/ (``make test-vllm``).
"""

from __future__ import annotations

import json
import sys

import pytest
from pydantic import BaseModel

from curator_flows import LLM, IncompleteRunError, offline, steps
from curator_flows.errors import ConfigError
from curator_flows.store import RunStore


class Item(BaseModel):
    n: int


class Numbers(LLM):
    def prompt(self, input: dict) -> str:
        return f"number {input['n']}"

    def parse(self, input: dict, response):
        if isinstance(response, Item):
            return {"n": input["n"], "echo": response.n}
        return {"n": input["n"], "response": response}


class FakeGenerator:
    """Answers ``{"n": <n>}`` for "number <n>"; ``behaviour(text, attempt)`` may override the
    content or finish_reason, or raise ValueError to reject the request (as vLLM does for a
    prompt longer than the context: the whole call fails)."""

    def __init__(self, store: RunStore | None = None, behaviour=None, crash_at_call=None):
        self.store = store
        self.behaviour = behaviour
        self.crash_at_call = crash_at_call
        self.calls: list[list[str]] = []
        self.stored_at_call: list[int] = []
        self.seen: dict[str, int] = {}
        self.closed = False

    def generate(self, requests):
        if self.store is not None:  # what is on disk when this chunk starts
            self.stored_at_call.append(len(list(self.store.iter_records("responses/*.jsonl"))))
        self.calls.append([r["custom_id"] for r in requests])
        if self.crash_at_call is not None and len(self.calls) == self.crash_at_call:
            raise KeyboardInterrupt("worker killed")
        out = []
        for request in requests:
            text = request["messages"][-1]["content"]
            if self.behaviour is not None and "reject" in text:
                self.behaviour(text, 0)
        for request in requests:
            text = request["messages"][-1]["content"]
            attempt = self.seen.get(request["custom_id"], 0)
            self.seen[request["custom_id"]] = attempt + 1
            content, reason = json.dumps({"n": int(text.split()[-1])}), "stop"
            if self.behaviour is not None:
                content, reason = self.behaviour(text, attempt) or (content, reason)
            out.append(
                {
                    "custom_id": request["custom_id"],
                    "content": content,
                    "finish_reason": reason,
                    "usage": {"prompt_tokens": 10, "completion_tokens": 4},
                }
            )
        return out

    def close(self):
        self.closed = True


def make_llm(response_format=None, **params) -> Numbers:
    backend_params = {"progress": "off", "batch_size": 4, **params}
    return Numbers(
        "some/model", backend="vllm", response_format=response_format, backend_params=backend_params
    )


def prepared(llm, rows: int, wd: str) -> tuple[dict, RunStore]:
    run = steps.prepare(llm, [{"n": i} for i in range(rows)], wd)
    return run, RunStore(run["run_uri"])


def lines(store: RunStore) -> list[dict]:
    return list(store.iter_records("responses/*.jsonl"))


def test_chunks_are_stored_before_the_next_chunk(wd):
    llm = make_llm()
    run, store = prepared(llm, 10, wd)
    gen = FakeGenerator(store)
    result = offline.run_offline(run, llm=llm, generator=gen)
    assert [len(c) for c in gen.calls] == [4, 4, 2]
    assert gen.stored_at_call == [0, 4, 8]
    assert result["sent"] == result["succeeded"] == 10 and result["details"]["chunks"] == 3
    assert result["input_tokens"] == 100 and result["output_tokens"] == 40
    assert not gen.closed  # a caller's generator stays open
    assert len(lines(store)) == 10


def test_crash_resumes_at_the_last_finished_chunk(wd, monkeypatch):
    llm = make_llm()
    run, store = prepared(llm, 10, wd)
    with pytest.raises(KeyboardInterrupt):
        offline.run_offline(run, llm=llm, generator=FakeGenerator(store, crash_at_call=3))
    assert len(lines(store)) == 8
    gen = FakeGenerator(store)
    result = offline.run_offline(run, llm=llm, generator=gen)
    assert result["pending_before"] == 2 and [len(c) for c in gen.calls] == [2]
    steps.finalize(run, llm=llm)
    final = steps.load_response(run)
    assert final.dataset["n"] == list(range(10))
    assert len(lines(store)) == 10
    # Nothing pending: no engine is even built.
    monkeypatch.setattr(offline, "build_generator", lambda llm: pytest.fail("engine built"))
    result = offline.run_offline(run, llm=llm)
    assert result["sent"] == 0 and result["pending_before"] == 0


def test_steps_run_offline_builds_one_engine_per_step(wd, monkeypatch):
    built: list[FakeGenerator] = []

    def build(llm):
        built.append(FakeGenerator())
        return built[-1]

    monkeypatch.setattr(offline, "build_generator", build)
    llm = make_llm(shard_size=6)
    run, _ = prepared(llm, 10, wd)
    assert len(run["shards"]) == 2
    result = steps.run_offline(run["run_uri"], run["shards"], llm=llm)
    assert len(built) == 1 and built[0].closed
    # Chunks run across the shard boundary; each record lands in its own shard's file.
    assert [len(c) for c in built[0].calls] == [4, 4, 2]
    assert result["succeeded"] == 10
    response = llm([{"n": i} for i in range(10)], working_dir=wd)
    assert len(built) == 1  # finished: the in-process call builds nothing
    assert response.dataset["n"] == list(range(10))


class SimulatedEngine(FakeGenerator):
    """A queueing generator like VLLMGenerator (submit / wait / done / collect / cancel) over a
    simulated engine: FCFS, ``capacity`` requests run per step, request "number n" needs
    ``steps(n)`` steps. Logs what happens when."""

    def __init__(self, store, capacity, steps, crash_at_collect=None):
        super().__init__(store)
        self.capacity = capacity
        self.steps = steps
        self.crash_at_collect = crash_at_collect
        self.queue: list[dict] = []  # unfinished requests, FCFS
        self.submitted = 0
        self.events: list[tuple] = []
        self.running_per_step: list[int] = []
        self.cancelled: list[int] = []

    @property
    def unfinished(self) -> int:
        return len(self.queue)

    def submit(self, requests):
        number = sum(e[0] == "submit" for e in self.events)
        self.events.append(("submit", number, len(lines(self.store))))
        sub = {"number": number, "requests": requests, "left": len(requests)}
        for request in requests:
            n = int(request["messages"][-1]["content"].split()[-1])
            self.queue.append({"sub": sub, "steps": self.steps(n)})
        self.submitted += len(requests)
        self.max_unfinished = max(getattr(self, "max_unfinished", 0), self.unfinished)
        return sub

    def done(self, sub):
        return sub["left"] == 0

    def _step(self):
        running = self.queue[: self.capacity]
        self.running_per_step.append(len(running))
        for entry in running:
            entry["steps"] -= 1
            if entry["steps"] == 0:
                entry["sub"]["left"] -= 1
        self.queue = [e for e in self.queue if e["steps"] > 0]

    def wait(self, subs, refill_below=0):
        while True:
            finished = [s for s in subs if self.done(s)]
            if finished or not subs or self.unfinished < refill_below:
                return finished
            self._step()

    def collect(self, sub):
        while not self.done(sub):
            self._step()
        self.events.append(("collect", sub["number"], len(lines(self.store))))
        if self.crash_at_collect is not None:
            if sum(e[0] == "collect" for e in self.events) == self.crash_at_collect:
                raise KeyboardInterrupt("worker killed")
        return FakeGenerator.generate(self, sub["requests"])

    def cancel(self, sub):
        self.cancelled.append(sub["number"])
        self.queue = [e for e in self.queue if e["sub"] is not sub]


def test_engine_stays_busy_and_chunks_are_stored_as_they_finish(wd):
    llm = make_llm()  # batch_size 4
    run, store = prepared(llm, 24, wd)
    # Row 0 is a long output: its chunk finishes last but holds nothing back.
    gen = SimulatedEngine(store, capacity=4, steps=lambda n: 30 if n == 0 else 2 + n % 3)
    result = offline.run_offline(run, llm=llm, generator=gen)
    assert result["succeeded"] == 24 and result["details"]["chunks"] == 6
    collected = [e[1] for e in gen.events if e[0] == "collect"]
    assert collected[-1] == 0 and sorted(collected) == list(range(6))
    # Stored the moment each chunk is done: 4 more lines at every collect.
    assert [e[2] for e in gen.events if e[0] == "collect"] == [0, 4, 8, 12, 16, 20]
    # Never more than capacity + two chunks queued, and every slot busy while requests
    # were still waiting to be submitted.
    assert gen.max_unfinished <= 4 + 2 * 4
    assert result["max_in_flight"] == gen.max_unfinished
    steps_while_pending = gen.running_per_step[: len(gen.running_per_step) - 30]
    assert all(running == 4 for running in steps_while_pending)
    assert len(lines(store)) == 24


def test_a_generator_that_does_not_queue_runs_chunk_by_chunk(wd):
    llm = make_llm()
    run, store = prepared(llm, 10, wd)
    gen = SimulatedEngine(store, capacity=4, steps=lambda n: 1)
    gen.queues = False  # VLLMGenerator on a vLLM without LLM.enqueue
    result = offline.run_offline(run, llm=llm, generator=gen)
    assert result["succeeded"] == 10
    assert not gen.events  # neither submit nor collect: generate(), one chunk at a time
    assert gen.stored_at_call == [0, 4, 8]


def test_a_crash_cancels_every_unstored_chunk(wd):
    llm = make_llm()
    run, store = prepared(llm, 14, wd)
    gen = SimulatedEngine(store, capacity=4, steps=lambda n: 3, crash_at_collect=2)
    with pytest.raises(KeyboardInterrupt):
        offline.run_offline(run, llm=llm, generator=gen)
    assert len(lines(store)) == 4  # the first chunk, stored before the second was collected
    # The chunk being collected and the ones queued behind it: nothing left in the engine.
    assert sorted(gen.cancelled) == [1, 2, 3] and gen.unfinished == 0
    again = SimulatedEngine(store, capacity=4, steps=lambda n: 3)
    result = offline.run_offline(run, llm=llm, generator=again)
    assert result["pending_before"] == 10 and result["succeeded"] == 10
    assert len(lines(store)) == 14


def test_invalid_outputs_are_retried_then_fail(wd):
    def behaviour(text, attempt):
        n = int(text.split()[-1])
        if n == 1 and attempt == 0:
            return "not json", "stop"  # schema-invalid once
        if n == 2 and attempt < 2:
            return json.dumps({"n": n}), "length"  # invalid finish reason twice
        if n == 3:
            return "never json", "stop"  # always invalid
        return None

    llm = make_llm(response_format=Item, max_retries=2, in_mtok_cost=1.0, out_mtok_cost=2.0)
    run, store = prepared(llm, 6, wd)
    gen = FakeGenerator(store, behaviour)
    result = offline.run_offline(run, llm=llm, generator=gen)
    # Retries join later chunks: 6 first attempts + 1 + 2 + 2 retries.
    assert sum(len(c) for c in gen.calls) == result["sent"] == 11
    assert result["succeeded"] == 5 and result["failed"] == 1
    by_n = {}
    requests = {r["id"]: r for r in store.iter_records("requests/*.jsonl")}
    for line in lines(store):
        by_n[requests[line["id"]]["row"]] = line
    assert by_n[1]["attempts"] == 2 and by_n[1]["wasted"] == [10, 4]
    assert by_n[2]["attempts"] == 3 and by_n[2]["wasted"] == [20, 8]
    assert "does not match Item" in by_n[3]["error"] and "after 3 attempts" in by_n[3]["error"]
    assert by_n[3]["retryable"] is False  # the model keeps refusing: sending again won't help
    steps.finalize(run, llm=llm)
    final = steps.load_response(run)
    assert final.request_stats.failed == 1
    assert final.dataset["n"] == [0, 1, 2, 4, 5]
    # Every generated token is counted and paid, retries included.
    assert final.token_usage.input == 110 and final.token_usage.output == 44
    assert final.cost_info.total_cost == pytest.approx((110 * 1.0 + 44 * 2.0) / 1e6)


def test_a_rejected_request_fails_alone(wd):
    def behaviour(text, attempt):
        if "reject" in text:
            raise ValueError("This model's maximum context length is 512 tokens")

    class Rejecting(Numbers):
        def prompt(self, input):
            return f"reject number {input['n']}" if input["n"] == 5 else f"number {input['n']}"

    llm = Rejecting(
        "m",
        backend="vllm",
        backend_params={"progress": "off", "batch_size": 8, "require_all_responses": True},
    )
    run = steps.prepare(llm, [{"n": i} for i in range(8)], wd, rebuild_check=False)
    gen = FakeGenerator(behaviour=behaviour)
    result = offline.run_offline(run, llm=llm, generator=gen)
    assert result["succeeded"] == 7 and result["failed"] == 1
    with pytest.raises(IncompleteRunError) as error:
        steps.finalize(run, llm=llm)
    assert error.value.retryable is False  # a prompt longer than the context stays so
    final = steps.load_response(run)
    assert final.dataset["n"] == [0, 1, 2, 3, 4, 6, 7]
    failure = json.loads(open(f"{run['run_uri']}/failed_requests.jsonl").readline())
    assert failure["row"] == 5 and "maximum context length" in failure["error"]


def test_all_rejected_is_a_configuration_error(wd):
    def behaviour(text, attempt):
        raise ValueError("grammar backend cannot compile the schema")

    class AllRejected(Numbers):
        def prompt(self, input):
            return f"reject number {input['n']}"

    llm = AllRejected("m", backend="vllm", backend_params={"progress": "off", "batch_size": 4})
    run = steps.prepare(llm, [{"n": i} for i in range(4)], wd, rebuild_check=False)
    with pytest.raises(ValueError, match="configuration problem"):
        offline.run_offline(run, llm=llm, generator=FakeGenerator(behaviour=behaviour))


def test_run_offline_refuses_an_online_run(wd):
    llm = Numbers("gpt-4o-mini", backend_params={"api_key": "x"})
    run = steps.prepare(llm, [{"n": 1}], wd)
    with pytest.raises(ValueError, match="not offline"):
        offline.run_offline(run)


def test_engine_arguments():
    llm = make_llm(
        tensor_parallel_size=2,
        max_model_length=1024,
        max_tokens=64,
        min_tokens=2,
        engine_kwargs={"dtype": "bfloat16", "kv_cache_memory_bytes": 1 << 28},
    )
    llm.generation_params = {"temperature": 0.2, "max_tokens": 32}
    engine, sampling = offline.engine_arguments(llm)
    assert engine == {
        "tensor_parallel_size": 2,
        "enforce_eager": False,
        "gpu_memory_utilization": 0.95,
        "max_model_len": 1024,
        "dtype": "bfloat16",
        "kv_cache_memory_bytes": 1 << 28,
    }
    assert sampling == {"max_tokens": 32, "min_tokens": 2, "temperature": 0.2}


@pytest.mark.parametrize(
    ("backend_params", "generation_params", "match"),
    [
        ({"batchsize": 8}, {}, r"unknown backend_params key.*allowed keys: \[.*'batch_size'"),
        ({"min_tokens": 9, "max_tokens": 4}, {}, "min_tokens"),
        ({"gpu_memory_utilization": 1.5}, {}, "gpu_memory_utilization"),
        ({"tensor_parallel_size": 0}, {}, "tensor_parallel_size"),
        ({"engine_kwargs": {"max_model_len": 64}}, {}, r"backend_params\['max_model_length'\]"),
        ({"engine_kwargs": {"kv_cache_memory_bytes": 0}}, {}, "kv_cache_memory_bytes"),
        ({"engine_kwargs": {"model": "x"}}, {}, "model_name"),
        ({}, {"temprature": 0.5}, "did you mean 'temperature'"),
        ({}, {"max_tokens": 2, "min_tokens": 3}, "min_tokens"),
        ({}, {"n": 2}, "n must be 1"),
        ({}, {"structured_outputs": {}}, "response_format"),
    ],
)
def test_bad_params_fail_at_construction(backend_params, generation_params, match):
    with pytest.raises(ConfigError, match=match):
        LLM(
            "m",
            backend="vllm",
            backend_params=backend_params,
            generation_params=generation_params,
        )


def test_construction_does_not_import_vllm():
    LLM("m", backend="vllm", generation_params={"temperature": 0.5})
    assert "vllm" not in sys.modules and "torch" not in sys.modules
