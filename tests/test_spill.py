"""Paid answers survive a full disk: what arrives after the run directory stopped taking writes
is kept in a spill file on this machine, and the next step merges it before sending anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import orjson
import pytest

from curator_flows import steps
from curator_flows.runs import open_run
from curator_flows.spill import FOLDER, spill, spill_folder
from curator_flows.store import RunStore

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from resume_llms import Numbered  # noqa: E402


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 KiB filesystem (tmpfs), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", f"spill-test-{uuid.uuid4().hex[:6]}", mount],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", mount], check=False)


def _fill(mount: Path, leave: int) -> Path:
    """Fill ``mount`` until ``leave`` bytes are free; the filler file is returned."""
    stats = os.statvfs(mount)
    free = stats.f_bavail * stats.f_frsize
    filler = mount / "filler"
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


def _answered(store: RunStore) -> set[str]:
    return {r["id"] for r in store.iter_records("responses/*.*jsonl") if "content" in r}


def test_answers_in_flight_when_the_disk_fills_are_kept_and_merged_by_the_next_run(
    sim, small_disk, tmp_path, monkeypatch
):
    """The disk fills mid-run: dispatch stops, the requests in flight still arrive and cannot
    be written; they go to a spill file in the temp dir (no setting needed), the error says
    where, and the next run merges them first and sends only what never got an answer."""
    sim.configure(latency=0.3)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # this process's temp dir, and...
    params = {
        "base_url": sim.base_url,
        "api_key": "k",
        "progress": "off",
        "max_concurrent_requests": 16,
    }
    llm = Numbered("gpt-4o-mini", backend_params=params)
    run = steps.prepare(llm, [{"n": i} for i in range(150)], str(small_disk / "wd"))
    store = RunStore(run["run_uri"])
    filler = _fill(small_disk, leave=16 * 1024)
    code = (
        "import sys\n"
        "from curator_flows import online, steps, StorageWriteError\n"
        "online.WRITE_RETRY_SECONDS = 1.0\n"
        "try:\n"
        f"    steps.run_online({run['run_uri']!r})\n"
        "except StorageWriteError as exc:\n"
        "    print('STORAGE', exc); sys.exit(3)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(SUPPORT), "TMPDIR": str(temp)},  # ...the child's
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 3, (child.stdout, child.stderr[-3000:])
    folder = spill_folder(store, run["run_id"])
    assert folder in child.stdout and "merges" in child.stdout
    spilled = [n for n in os.listdir(folder) if n.endswith(".jsonl")]
    assert spilled, "nothing arrived after the disk filled up"
    sent_first = sim.stats()["chat_completions"]
    stored_first = _answered(store)
    assert 0 < len(stored_first) < sent_first < 150  # answers arrived that the disk refused

    filler.unlink()  # space again
    result = steps.run_online(run, llm=llm)
    assert result["pending_before"] == 150 - sent_first  # the spilled answers were merged first
    assert set(sim.stats()["by_prompt"].values()) == {1}  # nothing was paid twice
    assert len(_answered(store)) == 150
    assert not os.path.exists(folder) and os.listdir(temp / FOLDER) == []


def test_a_spill_in_the_configured_spill_dir_is_merged_once(tmp_path, wd):
    """``spill_dir`` (a backend param) is where the next step looks too; a line the run already
    holds is not added again (a merge interrupted after its append)."""
    keep = str(tmp_path / "keep")
    params = {"api_key": "k", "progress": "off", "spill_dir": keep}
    llm = Numbered("gpt-4o-mini", backend_params=params)
    run = steps.prepare(llm, [{"n": i} for i in range(3)], wd)
    store = RunStore(run["run_uri"])
    lines = [
        {"id": r["id"], "content": f"answer {i}", "usage": [1, 1], "cost": 0.0, "attempts": 1}
        for i, r in enumerate(store.iter_records("requests/*.jsonl"))
    ]
    with store.appender("responses/00000") as out:
        out.append(lines[0])  # already in the run
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    folder = spill(store, run["run_id"], {"00000": data}, keep)
    assert folder.startswith(keep)
    open_run(run["run_uri"])  # any step of the run
    assert not os.path.exists(folder)
    records = [r["id"] for r in store.iter_records("responses/*.*jsonl")]
    assert sorted(records) == sorted(line["id"] for line in lines)  # each once
    assert steps.run_online(run, llm=llm)["pending_before"] == 0


def test_answers_a_refused_permission_will_not_take_are_spilled_and_the_error_is_permanent(
    sim, tmp_path, wd, monkeypatch
):
    """A shard's responses file the worker may not write (a refused permission, which no retry
    fixes): the answers that arrive for it are paid, so they are spilled at once (no 30 s of
    write retries), the error says a retry alone cannot help, and once access is given the
    next step merges them and pays for none of them again. Run in a child that cannot bypass
    file permissions (as root: without the capabilities that override them)."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions are not enforced")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    temp = tmp_path / "tmp"
    temp.mkdir()
    params = {"base_url": sim.base_url, "api_key": "k", "progress": "off", "shard_size": 5}
    llm = Numbered("gpt-4o-mini", backend_params=params)
    run = steps.prepare(llm, [{"n": i} for i in range(10)], wd)
    locked = Path(run["run_uri"]) / "responses" / "00001.jsonl"
    locked.parent.mkdir(exist_ok=True)
    locked.touch(mode=0o444)
    code = (
        "import sys\n"
        "from curator_flows import steps, StorageWriteError, is_retryable\n"
        "try:\n"
        f"    steps.run_online({run['run_uri']!r})\n"
        "except StorageWriteError as exc:\n"
        "    print('RETRYABLE' if is_retryable(exc) else 'PERMANENT', exc); sys.exit(3)\n"
    )
    child = subprocess.run(
        [*prefix, sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(SUPPORT), "TMPDIR": str(temp)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 3, (child.stdout, child.stderr[-3000:])
    assert child.stdout.startswith("PERMANENT") and "permission denied" in child.stdout
    assert "5 paid response line(s)" in child.stdout and "fix what the error names" in child.stdout
    assert sim.stats()["requests"] == 10

    locked.chmod(0o644)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the child spilled
    assert steps.run_online(run, llm=llm)["pending_before"] == 0  # the spill merged
    assert sim.stats()["requests"] == 10 and set(sim.stats()["by_prompt"].values()) == {1}
    assert len(_answered(RunStore(run["run_uri"]))) == 10
