"""Shard leases: one worker sends a shard at a time, across processes; a dead worker's lease is
taken over, a live one's never (not across PID namespaces either), and a worker frozen past its
lease sends nothing more when it wakes."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from curator_flows import LeaseHeldError, steps
from curator_flows.errors import LeaseLostError
from curator_flows.lease import ShardLeases
from curator_flows.store import RunStore

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from resume_llms import Numbered  # noqa: E402


def _worker(run_uri: str, shard: str) -> subprocess.Popen:
    code = (
        "import json, sys\n"
        "from curator_flows import steps, LeaseHeldError\n"
        "try:\n"
        f"    out = steps.run_online({run_uri!r}, {shard!r})\n"
        "    print(json.dumps({'sent': out['sent'], 'succeeded': out['succeeded']}))\n"
        "except LeaseHeldError as exc:\n"
        "    print(json.dumps({'lease_held': str(exc), 'retryable': exc.retryable}))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(SUPPORT), "OPENAI_API_KEY": "k"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _answer(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_two_workers_on_one_shard_send_each_request_once(sim, wd):
    sim.configure(latency=0.05)
    llm = Numbered(
        "gpt-4o-mini",
        backend_params={"base_url": sim.base_url, "max_concurrent_requests": 8, "progress": "off"},
    )
    run = steps.prepare(llm, [{"n": i} for i in range(300)], wd)
    first = _worker(run["run_uri"], "00000")
    deadline = time.monotonic() + 30
    while sim.stats()["chat_completions"] == 0:  # the first worker holds the lease and sends
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = _worker(run["run_uri"], "00000")
    answers = [_answer(first), _answer(second)]
    held = [a for a in answers if "lease_held" in a]
    worked = [a for a in answers if "succeeded" in a]
    assert len(held) == 1 and held[0]["retryable"] and "retry later" in held[0]["lease_held"]
    assert worked[0]["succeeded"] == 300
    assert set(sim.stats()["by_prompt"].values()) == {1}  # every request sent once


def test_a_killed_workers_lease_is_taken_over_and_nothing_is_sent_twice(sim, wd):
    sim.configure(latency=0.05)
    llm = Numbered(
        "gpt-4o-mini",
        backend_params={"base_url": sim.base_url, "max_concurrent_requests": 4, "progress": "off"},
    )
    run = steps.prepare(llm, [{"n": i} for i in range(200)], wd)
    first = _worker(run["run_uri"], "00000")
    deadline = time.monotonic() + 30
    while sim.stats()["status_counts"].get("200", 0) < 40:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.kill()  # SIGKILL: no release, the lease file says it is held
    first.wait()
    answer = _answer(_worker(run["run_uri"], "00000"))  # same host, dead pid: taken over at once
    assert "succeeded" in answer
    lines = RunStore(run["run_uri"]).iter_records("responses/*.*jsonl")
    successes = Counter(r["id"] for r in lines if "content" in r)
    assert len(successes) == 200 and set(successes.values()) == {1}
    # at most the few requests in flight at the kill were sent twice
    assert sum(v - 1 for v in sim.stats()["by_prompt"].values()) <= 4


def test_a_live_lease_of_another_host_blocks_until_it_expires(wd):
    store = RunStore(wd)
    store.write_json(
        "leases/00000/00000000.json",
        {
            "owner": "other-host:1:abc",
            "host": "other-host",
            "pid": 1,
            "expires_at": time.time() + 60,
        },
    )
    with pytest.raises(LeaseHeldError, match="other-host") as err:
        ShardLeases(store, ["00000"]).acquire()
    assert err.value.retryable and err.value.owner == "other-host:1:abc"
    store.write_json(
        "leases/00000/00000000.json",
        {
            "owner": "other-host:1:abc",
            "host": "other-host",
            "pid": 1,
            "expires_at": time.time() - 1,
        },
    )
    leases = ShardLeases(store, ["00000"])
    leases.acquire()  # expired: taken over as the next generation
    assert store.glob("leases/00000/*.json")[-1].endswith("00000001.json")
    leases.release()
    again = ShardLeases(store, ["00000"])
    again.acquire()  # released: free at once
    again.release()


def test_a_holder_whose_lease_was_taken_over_stops(wd):
    store = RunStore(wd)
    slow = ShardLeases(store, ["00000", "00001"], ttl=1.0)
    slow.acquire()
    slow._stop.set()  # a holder that stopped renewing (stuck): its lease expires
    time.sleep(1.2)
    taker = ShardLeases(store, ["00000"], ttl=60)
    taker.acquire()
    with pytest.raises(LeaseLostError, match="took it over"):
        slow.renew()
    taker.release()


def test_a_held_lease_is_renewed_by_its_thread_while_the_step_is_busy(wd):
    store = RunStore(wd)
    busy = ShardLeases(store, ["00000"], ttl=1.0)
    busy.acquire()  # e.g. a vLLM engine starting for minutes: nobody calls renew()
    time.sleep(2.5)
    with pytest.raises(LeaseHeldError):
        ShardLeases(store, ["00000"], ttl=1.0).acquire()
    busy.check()  # still ours
    busy.release()
    ShardLeases(store, ["00000"]).acquire()


def test_an_unreadable_lease_file_expires_after_its_ttl(wd):
    store = RunStore(wd)
    path = store.path("leases/00000/00000000.json")
    os.makedirs(os.path.dirname(path))
    open(path, "wb").close()  # a writer died between the exclusive create and its write
    with pytest.raises(LeaseHeldError):
        ShardLeases(store, ["00000"], ttl=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))
    leases = ShardLeases(store, ["00000"], ttl=60)
    leases.acquire()
    leases.release()


def test_acquiring_several_shards_is_all_or_nothing(wd):
    store = RunStore(wd)
    holder = ShardLeases(store, ["00001"])
    holder.acquire()
    with pytest.raises(LeaseHeldError):
        ShardLeases(store, ["00000", "00001"]).acquire()
    free = ShardLeases(store, ["00000"])
    free.acquire()  # 00000 was given back when the pair failed
    free.release()
    holder.release()


def test_a_shard_taken_again_and_again_keeps_one_lease_file(wd):
    store = RunStore(wd)
    for _ in range(5):
        with ShardLeases(store, ["00000"]):
            pass
    assert store.glob("leases/00000/*.json") == ["leases/00000/00000004.json"]
    holder = ShardLeases(store, ["00000"])
    holder.acquire()  # the next generation still follows the newest
    assert store.glob("leases/00000/*.json") == ["leases/00000/00000005.json"]
    with pytest.raises(LeaseHeldError):
        ShardLeases(store, ["00000"]).acquire()
    holder.release()


def test_leases_on_s3_use_a_conditional_create(s3_bucket):
    store = RunStore(f"{s3_bucket}/run")
    assert store.create_exclusive("leases/x/00000000.json", {"a": 1})
    assert not store.create_exclusive("leases/x/00000000.json", {"a": 2})
    assert store.read_json("leases/x/00000000.json") == {"a": 1}
    leases = ShardLeases(store, ["00000"])
    leases.acquire()
    with pytest.raises(LeaseHeldError):
        ShardLeases(store, ["00000"]).acquire()
    leases.release()


# ----------------------------------------------------------------------------- frozen workers
def _step_code(run_uri: str, shard: str = "00000") -> str:
    """A program that runs ``run_online``; its last stdout line says how it ended."""
    return (
        "import json\n"
        "from curator_flows import steps, LeaseHeldError\n"
        "from curator_flows.errors import LeaseLostError\n"
        "try:\n"
        f"    out = steps.run_online({run_uri!r}, {shard!r})\n"
        "    print(json.dumps({'succeeded': out['succeeded'], 'sent': out['sent']}))\n"
        "except LeaseLostError as exc:\n"
        "    print(json.dumps({'lost': str(exc)}))\n"
        "except LeaseHeldError as exc:\n"
        "    print(json.dumps({'held': str(exc)}))\n"
    )


def _step(run_uri: str, shard: str = "00000") -> subprocess.Popen:
    """``run_online`` in a child process (see :func:`_step_code`)."""
    return subprocess.Popen(
        [sys.executable, "-c", _step_code(run_uri, shard)],
        env={**os.environ, "PYTHONPATH": str(SUPPORT), "OPENAI_API_KEY": "k"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition, seconds: float, *procs: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        for proc in procs:
            assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _prompts_by_id(store: RunStore) -> dict[str, str]:
    return {r["id"]: r["messages"][-1]["content"] for r in store.iter_records("requests/*.jsonl")}


def _lease_expiry(store: RunStore, shard: str) -> float:
    return float(store.read_json(store.glob(f"leases/{shard}/*.json")[-1])["expires_at"])


def test_a_frozen_worker_sends_nothing_after_it_wakes_once_its_lease_was_taken(sim, wd):
    """SIGSTOP a worker mid-shard past its lease, let a second worker take the shard over, then
    SIGCONT the first: it stores what was in flight at the freeze and sends nothing more, so
    the only prompts sent twice are those in flight at the freeze."""
    sim.configure(latency=0.1)
    llm = Numbered(
        "gpt-4o-mini",
        backend_params={
            "base_url": sim.base_url,
            "max_concurrent_requests": 8,
            "lease_seconds": 3,
            "progress": "off",
        },
    )
    run = steps.prepare(llm, [{"n": i} for i in range(400)], wd)
    store = RunStore(run["run_uri"])
    prompts = _prompts_by_id(store)
    first = _step(run["run_uri"])
    second = None
    try:
        _wait_for(lambda: sim.stats()["status_counts"].get("200", 0) >= 40, 60, first)
        os.kill(first.pid, signal.SIGSTOP)
        time.sleep(0.5)  # whatever it had written to its sockets reaches the simulator
        sent_at_freeze = set(sim.stats()["by_prompt"])
        stored = {r["id"] for r in store.iter_records("responses/*.*jsonl") if "content" in r}
        in_flight = sent_at_freeze - {prompts[i] for i in stored}
        assert 0 < len(in_flight) <= 8
        _wait_for(lambda: time.time() > _lease_expiry(store, "00000") + 0.2, 30)
        second = _step(run["run_uri"])
        # the second worker took the shard over and has sent well past where the first stopped
        _wait_for(lambda: sim.stats()["chat_completions"] >= len(sent_at_freeze) + 80, 60)
        os.kill(first.pid, signal.SIGCONT)
        woke, took_over = _answer(first), _answer(second)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
    assert "lost" in woke, woke
    assert took_over.get("succeeded") == 400 - len(stored), took_over
    twice = {p for p, n in sim.stats()["by_prompt"].items() if n > 1}
    assert twice <= in_flight, f"sent again after the wake: {sorted(twice - in_flight)}"
    answered = {r["id"] for r in store.iter_records("responses/*.*jsonl") if "content" in r}
    assert answered == set(prompts)  # the answers that arrived after the wake were stored too


def test_the_fence_refuses_once_the_last_confirmed_renewal_is_too_old(wd):
    store = RunStore(wd)
    leases = ShardLeases(store, ["00000"], ttl=1.0)
    leases.acquire()
    leases.check()
    leases._stop.set()  # renewals stop (as in a process frozen right after its last renewal)
    leases._keepalive.join()
    time.sleep(0.95)
    with pytest.raises(LeaseLostError, match="paused"):
        leases.check()  # not expired yet, but too near expiry to send
    time.sleep(0.2)
    with pytest.raises(LeaseLostError, match="expired"):
        leases.renew()  # expired: not renewed, even though nobody took it over yet
    leases.release()


# ----------------------------------------------------------------------------- PID namespaces
def _unshare_works() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _in_own_pid_namespace(proc_args: list[str], burn_pids: int = 0) -> list[str]:
    """``proc_args`` as a process of a fresh PID namespace (with its own /proc), after
    ``burn_pids`` short-lived processes so that its PID is above them."""
    command = " ".join(shlex.quote(arg) for arg in proc_args)
    script = f"for i in $(seq {burn_pids}); do /bin/true; done; {command}; exit $?"
    return ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script]


def test_a_live_holder_in_another_pid_namespace_keeps_its_lease_until_it_expires(sim, wd):
    """Two containers on one host with the host's network (same hostname, own PID namespaces):
    the holder's PID means nothing to the other worker, so the lease is judged by its expiry
    alone and the second worker sends nothing while the first is alive."""
    if not _unshare_works():
        pytest.skip(
            "unshare --pid --fork --mount-proc is refused here (needs root and a kernel "
            "that allows PID namespaces)"
        )
    sim.configure(latency=0.05)
    llm = Numbered(
        "gpt-4o-mini",
        backend_params={"base_url": sim.base_url, "max_concurrent_requests": 4, "progress": "off"},
    )
    run = steps.prepare(llm, [{"n": i} for i in range(200)], wd)
    store = RunStore(run["run_uri"])
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "OPENAI_API_KEY": "k"}

    def worker(burn_pids: int) -> subprocess.Popen:
        return subprocess.Popen(
            _in_own_pid_namespace([sys.executable, "-c", _step_code(run["run_uri"])], burn_pids),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    first = worker(burn_pids=40)  # its PID (> 40) exists in no other fresh namespace
    try:
        _wait_for(lambda: sim.stats()["status_counts"].get("200", 0) >= 20, 60, first)
        holder = store.read_json(store.glob("leases/00000/*.json")[-1])
        assert holder["pid"] > 40 and holder["expires_at"] > time.time()
        second = _answer(worker(burn_pids=0))
        assert "held" in second, second  # not taken from the live first worker
        assert "succeeded" in _answer(first)
    finally:
        if first.poll() is None:
            first.kill()
    assert set(sim.stats()["by_prompt"].values()) == {1}  # every request sent once


def test_a_pid_reused_by_another_process_does_not_keep_a_dead_holders_lease(wd):
    from curator_flows import liveness

    store = RunStore(wd)
    here = liveness.current()
    if here is None:
        pytest.skip("no /proc here: leases are judged by their expiry alone")
    other = subprocess.Popen(["sleep", "30"])
    try:
        started = liveness._stat(other.pid)[1]
        record = {
            "owner": "gone",
            "host": "any",
            "pid": other.pid,
            "pid_scope": here.scope,
            "pid_start": started + 1,  # the holder had this PID, then died; `sleep` got it
            "expires_at": time.time() + 60,
        }
        store.write_json("leases/00000/00000000.json", record)
        ShardLeases(store, ["00000"]).acquire()  # taken over at once
        store.write_json("leases/00001/00000000.json", {**record, "pid_start": started})
        with pytest.raises(LeaseHeldError):  # the very process that holds it: alive
            ShardLeases(store, ["00001"]).acquire()
        store.write_json("leases/00002/00000000.json", {**record, "pid_scope": "elsewhere"})
        with pytest.raises(LeaseHeldError):  # another namespace or boot: wait for the expiry
            ShardLeases(store, ["00002"]).acquire()
    finally:
        other.kill()
        other.wait()


def _stopped(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` is stopped (SIGSTOP)."""
    with open(f"/proc/{proc.pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_a_frozen_offline_worker_stores_its_chunk_and_submits_nothing_more(wd):
    """The offline runner froze (SIGSTOP) while its second chunk was in the engine and woke
    after its lease expired: it stores that chunk and submits no other (another worker may be
    generating the shard by now)."""
    from offline_llms import OfflineNumbers

    llm = OfflineNumbers(
        "some/model",
        backend="vllm",
        backend_params={"batch_size": 4, "lease_seconds": 2, "progress": "off"},
    )
    run = steps.prepare(llm, [{"n": i} for i in range(20)], wd)
    store = RunStore(run["run_uri"])
    calls = os.path.join(wd, "calls.txt")
    code = (
        "import json\n"
        "from offline_llms import FreezingGenerator\n"
        "from curator_flows import offline\n"
        "from curator_flows.errors import LeaseLostError\n"
        "try:\n"
        f"    out = offline.run_offline({run['run_uri']!r}, "
        f"generator=FreezingGenerator({calls!r}, freeze_at=2))\n"
        "    print(json.dumps({'succeeded': out['succeeded']}))\n"
        "except LeaseLostError as exc:\n"
        "    print(json.dumps({'lost': str(exc)}))\n"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(SUPPORT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: _stopped(worker), 60, worker)
        _wait_for(lambda: time.time() > _lease_expiry(store, "00000") + 0.2, 30)
        os.kill(worker.pid, signal.SIGCONT)
        answer = _answer(worker)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
            worker.kill()
    assert "lost" in answer, answer
    with open(calls) as handle:
        assert handle.read().split() == ["4", "4"]  # no chunk submitted after the wake
    stored = [r for r in store.iter_records("responses/*.*jsonl") if "content" in r]
    assert len(stored) == 8  # the chunk that was in the engine at the freeze is kept
