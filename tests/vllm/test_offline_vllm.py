"""``LLM(backend="vllm")`` end to end on the real vLLM engine (CPU, tiny random Llama).

Prompts (plain strings and chat conversations) go through the chat template; structured
output is valid for every row while the unconstrained control is not; generation runs in
chunks of ``batch_size`` through one engine per step; a worker killed with SIGKILL resumes at
the last stored chunk and ``steps.run_offline`` runs from the run URI alone in a fresh process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from offline_llms import Record, Records, StructuredRecords, offline_params, resume_llm  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from curator_flows.backends import vllm as vllm_backend  # noqa: E402
from curator_flows.errors import ConfigError  # noqa: E402
from curator_flows.store import RunStore  # noqa: E402

SUPPORT = Path(__file__).parent / "support"
ROWS = 24
BATCH = 8
MAX_TOKENS = 96  # the constrained records need < 50
PRICES = {"in_mtok_cost": 0.5, "out_mtok_cost": 2.0}


def count_generators(mp: pytest.MonkeyPatch) -> dict:
    """Count engines built and chunks queued (``offline`` looks the class up at run time)."""
    counts: dict = {"engines": 0, "chunk_sizes": []}

    class Counting(vllm_backend.VLLMGenerator):
        def __init__(self, *args, **kwargs):
            counts["engines"] += 1
            super().__init__(*args, **kwargs)

        def submit(self, requests):
            counts["chunk_sizes"].append(len(requests))
            return super().submit(requests)

    mp.setattr(vllm_backend, "VLLMGenerator", Counting)
    return counts


def response_lines(run_uri: str) -> list[dict]:
    store = RunStore(run_uri)
    return list(store.iter_records("responses/*.jsonl"))


def requests_by_id(run_uri: str) -> dict[str, dict]:
    store = RunStore(run_uri)
    return {r["id"]: r for r in store.iter_records("requests/*.jsonl")}


def is_record(text: str) -> bool:
    try:
        Record.model_validate_json(text)
    except ValidationError:
        return False
    return True


def run_counted(engines, llm, rows, working_dir):
    engines.release()  # one open engine per process
    with pytest.MonkeyPatch.context() as mp:
        counts = count_generators(mp)
        result = llm(rows, working_dir=working_dir)
    return result, counts


@pytest.fixture(scope="module")
def plain_run(engines, tiny_model, tmp_path_factory):
    """One unconstrained run over ROWS rows: the end-to-end case and the control."""
    llm = Records(
        tiny_model,
        backend="vllm",
        backend_params=offline_params(
            batch_size=BATCH, max_tokens=MAX_TOKENS, invalid_finish_reasons=[], **PRICES
        ),
    )
    wd = str(tmp_path_factory.mktemp("offline-plain"))
    result, counts = run_counted(engines, llm, [{"n": i} for i in range(ROWS)], wd)
    return llm, result, counts, wd


def test_plain_and_chat_prompts_end_to_end(plain_run, tokenizer):
    _, result, counts, _ = plain_run
    assert result.request_stats.succeeded == ROWS and result.request_stats.failed == 0
    assert result.dataset["n"] == list(range(ROWS))  # input order
    assert all(isinstance(text, str) and text for text in result.dataset["response"])
    # One engine for the step, fed chunks of batch_size.
    assert counts == {"engines": 1, "chunk_sizes": [BATCH] * (ROWS // BATCH)}

    lines = response_lines(result.cache_dir)
    assert len(lines) == ROWS
    requests = requests_by_id(result.cache_dir)
    assert {line["id"] for line in lines} == set(requests)
    for line in lines:
        messages = requests[line["id"]]["messages"]
        # Plain strings were stored as one user message; both kinds went through the chat
        # template (BOS, role markers, end-of-turn, assistant marker).
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        expected = len(tokenizer.encode(rendered, add_special_tokens=False))
        assert line["usage"][0] == expected
        assert 0 < line["usage"][1] <= MAX_TOKENS
    kinds = {len(r["messages"]) for r in requests.values()}
    assert kinds == {1, 2}  # plain prompts and system + user conversations


def test_token_usage_and_cost_from_outputs(plain_run):
    _, result, _, _ = plain_run
    lines = response_lines(result.cache_dir)
    tokens_in = sum(line["usage"][0] for line in lines)
    tokens_out = sum(line["usage"][1] for line in lines)
    assert result.token_usage.input == tokens_in > 0
    assert result.token_usage.output == tokens_out > 0
    expected = (tokens_in * PRICES["in_mtok_cost"] + tokens_out * PRICES["out_mtok_cost"]) / 1e6
    assert result.cost_info.total_cost == pytest.approx(expected)
    assert result.cost_info.input_cost_per_million == PRICES["in_mtok_cost"]
    assert result.cost_info.output_cost_per_million == PRICES["out_mtok_cost"]
    assert result.performance_stats.output_tokens_per_minute > 0


def test_second_call_generates_nothing(plain_run, engines):
    llm, first, _, wd = plain_run
    result, counts = run_counted(engines, llm, [{"n": i} for i in range(ROWS)], wd)
    assert counts == {"engines": 0, "chunk_sizes": []}
    assert result.request_stats == first.request_stats  # the run's statistics, unchanged
    assert result.dataset["response"] == first.dataset["response"]
    assert len(response_lines(result.cache_dir)) == ROWS


def test_structured_output_valid_for_every_row(plain_run, engines, tiny_model, tmp_path):
    llm = StructuredRecords(
        tiny_model,
        backend="vllm",
        backend_params=offline_params(batch_size=BATCH, max_tokens=MAX_TOKENS),
    )
    result, counts = run_counted(engines, llm, [{"n": i} for i in range(ROWS)], str(tmp_path))
    assert counts["engines"] == 1
    assert result.request_stats.succeeded == ROWS and result.request_stats.failed == 0
    assert result.dataset["n"] == list(range(ROWS))
    for row in result.dataset:  # validated by pydantic in finalize, then parsed
        Record(name=row["name"], score=row["score"])
    assert all(is_record(line["content"]) for line in response_lines(result.cache_dir))

    # Control: the same prompts without response_format do not validate, so the constraint
    # was applied, not ignored.
    _, plain, _, _ = plain_run
    valid = sum(is_record(text) for text in plain.dataset["response"])
    assert valid < ROWS // 2


def test_killed_worker_resumes_at_the_last_chunk(
    no_open_engine, tiny_model, tmp_path, subprocess_env
):
    rows, batch = 48, 8
    wd = tmp_path / "wd"
    worker = [sys.executable, str(SUPPORT / "offline_worker.py")]
    log = tmp_path / "worker.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*worker, "call", str(wd), tiny_model, str(rows), str(batch), "--pause-after", "1"],
            env=subprocess_env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        stored = 0
        while time.monotonic() < deadline:
            stored = sum(
                p.read_bytes().count(b"\n") for p in wd.glob("*/responses/*.jsonl") if p.is_file()
            )
            if stored >= batch or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert stored >= batch, "the first chunk never arrived:\n" + log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (run_dir,) = [p.parent for p in wd.glob("*/manifest.json")]
    assert len(response_lines(str(run_dir))) == batch  # the first chunk, nothing more

    # Resume: the step from the run URI alone, in a fresh process, with explicit shards.
    shards = [s["name"] for s in json.loads((run_dir / "manifest.json").read_text())["shards"]]
    assert len(shards) == 2
    done = subprocess.run(
        [*worker, "step", str(run_dir), *shards],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    remaining = rows - batch
    assert report["engines"] == 1
    assert report["chunks"] == report["collected"] == remaining // batch
    assert report["prompts"] == remaining
    step = report["step"]
    assert step["pending_before"] == remaining
    assert step["sent"] == step["succeeded"] == remaining and step["failed"] == 0
    assert step["input_tokens"] > 0 and step["output_tokens"] > 0

    # Finalize in this process: every row exactly once, nothing generated twice.
    llm = resume_llm(tiny_model, batch)
    with pytest.MonkeyPatch.context() as mp:
        counts = count_generators(mp)
        result = llm([{"n": i} for i in range(rows)], working_dir=str(wd))
    assert counts["engines"] == 0
    assert result.cache_dir.rstrip("/").endswith(run_dir.name)
    assert result.dataset["n"] == list(range(rows))
    assert result.request_stats.succeeded == rows and result.request_stats.failed == 0
    lines = response_lines(str(run_dir))
    assert len(lines) == rows
    assert len({line["id"] for line in lines}) == rows


def test_bad_params_fail_at_construction_without_importing_vllm(tiny_model, subprocess_env):
    # In this process vLLM is imported already; a fresh one shows construction stays cheap.
    code = f"""
import sys
from curator_flows import LLM
from curator_flows.errors import ConfigError
cases = [
    ({{"batchsize": 8}}, {{}}, "allowed keys"),
    ({{"min_tokens": 9, "max_tokens": 4}}, {{}}, "min_tokens"),
    ({{"gpu_memory_utilization": 1.5}}, {{}}, "gpu_memory_utilization"),
    ({{"engine_kwargs": {{"kv_cache_memory_byte": 1}}}}, {{}}, "kv_cache_memory_bytes"),
    ({{"engine_kwargs": {{"max_model_len": 64}}}}, {{}}, "max_model_length"),
    ({{}}, {{"temprature": 0.5}}, "did you mean 'temperature'"),
    ({{}}, {{"top_p": 0}}, "top_p"),
]
for backend_params, generation_params, match in cases:
    try:
        LLM({tiny_model!r}, backend="vllm", backend_params=backend_params,
            generation_params=generation_params)
    except ConfigError as exc:
        assert match in str(exc), (match, str(exc))
    else:
        raise AssertionError(f"no error for {{backend_params}} {{generation_params}}")
assert "vllm" not in sys.modules and "torch" not in sys.modules
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_bad_params_fail_before_the_engine_starts(tiny_model, monkeypatch):
    def no_engine(*args, **kwargs):
        raise AssertionError("no engine may start")

    monkeypatch.setattr(vllm_backend, "VLLMGenerator", no_engine)
    with pytest.raises(ConfigError, match="unknown engine parameter"):
        Records(
            tiny_model,
            backend="vllm",
            backend_params=offline_params(engine_kwargs={"not_an_engine_arg": 1}),
        )


def test_curator_system_prompt_row_params_and_completions(engines, tiny_model, tmp_path):
    """Curator's ``system_prompt``, a ``generation_params`` column and
    ``return_completions_object`` on the offline backend."""
    from offline_llms import Completions

    llm = Completions(
        tiny_model,
        backend="vllm",
        system_prompt="You answer briefly.",
        backend_params=offline_params(
            batch_size=BATCH, max_tokens=MAX_TOKENS, invalid_finish_reasons=[]
        ),
    )
    rows = [
        {"topic": "rain", "generation_params": json.dumps({"max_tokens": 3, "min_tokens": 3})},
        {"topic": "snow"},
    ]
    result, _ = run_counted(engines, llm, rows, str(tmp_path))
    capped, free = result.dataset.to_list()
    assert capped["completion_tokens"] == 3 and capped["finish_reason"] == "length"
    assert free["completion_tokens"] > 3
    for request in requests_by_id(result.cache_dir).values():
        assert request["messages"][0] == {"role": "system", "content": "You answer briefly."}
    lines = response_lines(result.cache_dir)
    assert all(line["completion"]["object"] == "chat.completion" for line in lines)
