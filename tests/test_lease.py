"""Shard leases: one worker sends a shard at a time, across processes; a dead worker's lease is
taken over."""

from __future__ import annotations

import json
import os
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
