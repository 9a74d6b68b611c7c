"""The batch submit is fenced: a worker frozen past its lease, whose shard another worker took
over and submitted, creates no second batch when it wakes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from batch_helpers import HERE, MODELS, batch_params
from batch_llms import Numbered

from curator_flows import steps
from curator_flows.store import RunStore

#: the submit step in a child that stops itself (SIGSTOP) right after its upload returned, as a
#: VM suspend or a long pause would; the test decides when it wakes
FREEZE_AFTER_UPLOAD = """
import json, os, signal, sys
from curator_flows.batch import openai as provider
from curator_flows.errors import LeaseLostError
upload = provider.OpenAIBatches.upload
def frozen_upload(self, *args, **kwargs):
    file_id = upload(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGSTOP)
    return file_id
provider.OpenAIBatches.upload = frozen_upload
from curator_flows import steps
try:
    state = steps.submit(sys.argv[1], "00000")
    print(json.dumps({"state": state["state"], "created": state["created"]}))
except LeaseLostError as exc:
    print(json.dumps({"lost": str(exc)}))
"""


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0]


def _wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_a_submit_frozen_past_its_lease_creates_no_second_batch(bsim, wd):
    llm = Numbered(MODELS["openai"], batch=True, backend_params=batch_params(bsim, lease_seconds=2))
    run = steps.prepare(llm, [{"n": i} for i in range(10)], wd)
    store = RunStore(run["run_uri"])
    worker = subprocess.Popen(
        [sys.executable, "-c", FREEZE_AFTER_UPLOAD, run["run_uri"]],
        env={**os.environ, "PYTHONPATH": str(HERE), "OPENAI_API_KEY": "sk-test-not-a-secret"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: worker.poll() is not None or _state(worker.pid) == "T", 60)
        assert worker.poll() is None, worker.communicate()
        lease = store.glob("leases/00000/*.json")[-1]
        _wait_for(lambda: time.time() > store.read_json(lease)["expires_at"] + 0.2, 30)
        taken = steps.submit(run, "00000", llm=llm)  # another worker takes the shard over
        assert taken["state"] == "submitted" and taken["created"]
        os.kill(worker.pid, signal.SIGCONT)
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
            worker.kill()
    answer = json.loads(out.strip().splitlines()[-1])
    assert "lost" in answer, (answer, err[-2000:])
    assert bsim.stats()["batches_created"] == 1  # the woken worker created nothing
