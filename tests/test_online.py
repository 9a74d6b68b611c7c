"""The online runner's stop conditions and stalls, over real HTTP against the simulator:
unreachable endpoints end the call, timeouts and dropped connections are failures (not an
unreachable endpoint), a slow first request does not hold the others back,
buffered responses on object stores reach the store on a timer, write errors keep what arrived."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curator_flows import LLM, EndpointUnreachableError, StorageWriteError, steps
from curator_flows.store import RunStore

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from resume_llms import Numbered  # noqa: E402


class Topic(LLM):
    def prompt(self, input: dict) -> str:
        return f"Write one line about {input['topic']}."

    def parse(self, input: dict, response: str) -> dict:
        return {"topic": input["topic"], "text": response}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: connections refused


def response_records(run_uri: str) -> list[dict]:
    return list(RunStore(run_uri).iter_records("responses/*.*jsonl"))


def test_an_unreachable_endpoint_ends_the_call_quickly_and_records_nothing(wd):
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    llm = Topic(
        "gpt-4o-mini",
        backend_params={"base_url": base_url, "api_key": "k", "max_retries": 2, "progress": "off"},
    )
    started = time.monotonic()
    with pytest.raises(EndpointUnreachableError, match="could not reach") as err:
        llm([{"topic": f"t{i}"} for i in range(20)], working_dir=wd)
    assert time.monotonic() - started < 20
    assert err.value.retryable and base_url in str(err.value)
    run_dir = next(p for p in Path(wd).iterdir() if p.is_dir())
    assert response_records(str(run_dir)) == []  # nothing paid, nothing recorded: all pending


def test_connections_dropped_after_sending_are_failures_not_an_unreachable_endpoint(
    sim, params, wd
):
    """The endpoint accepted each connection and dropped it after the request was sent (it may
    have billed it): each request fails after max_retries with a retryable failure line."""
    rows = [{"topic": f"gone {i} [[sim:drop]]"} for i in range(5)]
    llm = Topic("gpt-4o-mini", backend_params=params(max_retries=1))
    run = steps.prepare(llm, rows, wd)
    result = steps.run_online(run, llm=llm)
    assert result["failed"] == 5 and result["succeeded"] == 0
    lines = response_records(run["run_uri"])
    assert len(lines) == 5
    assert all("dropped" in r["error"] and r["retryable"] for r in lines)
    assert sim.stats()["faults"]["drop"] <= 2 * 5


def test_requests_hanging_past_the_timeout_end_the_call(sim, params, wd):
    sim.configure(hang_seconds=30)
    rows = [{"topic": f"slow {i} [[sim:hang]]"} for i in range(3)]
    llm = Topic("gpt-4o-mini", backend_params=params(max_retries=1, request_timeout=0.5))
    run = steps.prepare(llm, rows, wd)
    started = time.monotonic()
    result = steps.run_online(run, llm=llm)
    assert time.monotonic() - started < 15
    assert result["failed"] == 3
    assert all("timeout" in r["error"] for r in response_records(run["run_uri"]))


def test_answers_slower_than_request_timeout_are_timeouts_that_stop_after_max_retries(
    sim, params, wd, caplog
):
    """The provider answers, but after request_timeout: each request is sent 1 + max_retries
    times and ends as a retryable failure line saying to raise request_timeout; no
    EndpointUnreachableError (whose orchestrator retries would pay for every request again)."""
    sim.configure(latency=2.0)
    rows = [{"topic": f"t{i}"} for i in range(6)]
    llm = Topic("gpt-4o-mini", backend_params=params(max_retries=1, request_timeout=0.5))
    run = steps.prepare(llm, rows, wd)
    with caplog.at_level("WARNING", logger="curator_flows"):
        result = steps.run_online(run, llm=llm)
    assert result["failed"] == 6 and result["succeeded"] == 0
    assert sim.stats()["chat_completions"] == 6 * 2  # every request reached the provider twice
    lines = response_records(run["run_uri"])
    assert len(lines) == 6
    for line in lines:
        assert line["retryable"] and line["attempts"] == 2
        assert "timeout" in line["error"] and "request_timeout" in line["error"]
        assert "reasoning models" in line["error"]
    warnings = [r for r in caplog.records if "request_timeout" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"


def test_a_hanging_first_request_does_not_hold_up_the_others(sim, params, wd):
    sim.configure(hang_seconds=20)
    rows = [{"topic": "first [[sim:hangx1]]"}] + [{"topic": f"t{i}"} for i in range(30)]
    llm = Topic("gpt-4o-mini", backend_params=params(request_timeout=12, max_retries=1))
    run = steps.prepare(llm, rows, wd)
    steps.run_online(run, llm=llm)
    answers = [r for r in response_records(run["run_uri"]) if "content" in r]
    assert len(answers) == 31
    retried = [r["ts"] for r in answers if r["attempts"] == 2]
    others = [r["ts"] for r in answers if r["attempts"] == 1]
    # the hanging request is answered only on its retry, after the 12 s timeout; the 30 others
    # did not wait for it: all were answered long before it
    assert len(retried) == 1 and len(others) == 30
    assert max(others) < retried[0] - 6


def _start_subprocess(code: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(SUPPORT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_object_store_responses_are_flushed_on_a_timer_and_survive_kill_9(
    sim, s3_endpoint, s3_bucket, tmp_path
):
    """40 paid responses followed by one request that hangs: they reach the store within ~2 s
    (not when the next response arrives), so a kill -9 loses none of them."""
    sim.configure(hang_seconds=60)
    rows = [{"n": i} for i in range(40)] + [{"n": "40 [[sim:hang]]"}]
    params = {"base_url": sim.base_url, "api_key": "k", "progress": "off", "request_timeout": 50}
    llm = Numbered("gpt-4o-mini", backend_params=params)
    run = steps.prepare(llm, rows, f"{s3_bucket}/runs")
    code = (
        f"import fsspec; fsspec.config.conf['s3'] = {{'endpoint_url': {s3_endpoint!r}}}\n"
        "from curator_flows import steps\n"
        f"steps.run_online({run['run_uri']!r})\n"
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    worker = _start_subprocess(code, env)
    try:
        deadline = time.monotonic() + 30
        while sim.stats()["status_counts"].get("200", 0) < 40:
            assert time.monotonic() < deadline and worker.poll() is None, worker.stderr.read()
            time.sleep(0.1)
        # no answer follows the 40th (the next request hangs for 60 s): only the timer flush
        # can bring the 40 answers to the store while the worker is alive
        store = RunStore(run["run_uri"])
        flushed = time.monotonic() + 20
        while len(_stored_answers(store)) < 40:
            assert time.monotonic() < flushed and worker.poll() is None
            time.sleep(0.2)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert len(_stored_answers(RunStore(run["run_uri"]))) == 40  # kill -9 lost none of them


def _stored_answers(store: RunStore) -> set[str]:
    return {r["id"] for r in store.iter_records("responses/*.*jsonl") if "content" in r}


def test_a_failing_write_stops_dispatch_and_the_next_run_sends_only_what_is_missing(sim, wd):
    """A file-size limit (RLIMIT_FSIZE) makes the response file unwritable mid-run: dispatch stops
    with a StorageWriteError, nothing stored is lost or torn, the answers that arrived after the
    failure are kept in a spill file, and a later run sends only what never got an answer."""
    params = {
        "base_url": sim.base_url,
        "api_key": "k",
        "progress": "off",
        "max_concurrent_requests": 4,
    }
    rows = [{"n": i} for i in range(400)]
    llm = Numbered("gpt-4o-mini", backend_params=params)
    run = steps.prepare(llm, rows, wd)
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "from curator_flows import online, steps, StorageWriteError\n"
        "online.WRITE_RETRY_SECONDS = 1.0\n"
        "try:\n"
        f"    steps.run_online({run['run_uri']!r})\n"
        "except StorageWriteError as exc:\n"
        "    print('STORAGE', exc.retryable, exc); sys.exit(3)\n"
    )
    worker = _start_subprocess(code, {})
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 3, (out, err[-2000:])
    assert "STORAGE True" in out and "could not be written" in out
    sent_first = sim.stats()["chat_completions"]
    assert sent_first < 400  # dispatch stopped early
    records = response_records(run["run_uri"])  # every stored line decodes (none torn)
    stored = {r["id"] for r in records if "content" in r}
    assert 0 < len(stored) < 400
    result = steps.run_online(run, llm=llm)  # merges what arrived unwritten (kept aside) first
    assert result["pending_before"] == 400 - sent_first
    assert sim.stats()["chat_completions"] == 400
    ids = [r["id"] for r in response_records(run["run_uri"]) if "content" in r]
    assert len(ids) == len(set(ids)) == 400
    assert set(sim.stats()["by_prompt"].values()) == {1}  # nothing was paid twice
    assert issubclass(StorageWriteError, OSError)
