"""A damaged or unusable run directory fails with a library error that names the file (and the
line), says whether a retry helps and how to recover without paying again; derived files are
rewritten instead; over real HTTP against the simulator, on local disk (and S3 where it
differs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from curator_flows import LLM, steps
from curator_flows.errors import CorruptRunError, StorageAccessError, is_retryable
from curator_flows.publish import published_files

ROWS = [{"t": i} for i in range(40)]


class Topic(LLM):
    def prompt(self, input):
        return f"topic {input['t']}"

    def parse(self, input, response):
        return {"t": input["t"], "response": response}


def _sent(sim) -> int:
    return sim.stats()["requests"]


def _cut(path: str, keep: int) -> None:
    """Keep the first ``keep`` bytes of ``path`` (negative: drop that many from the end)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:keep])


# ----------------------------------------------------------------------------- requests files
def test_a_torn_request_line_is_an_error_naming_the_file_and_line_and_nothing_paid_is_lost(
    sim, params, wd
):
    llm = Topic("gpt-4o-mini", backend_params=params())
    run = steps.prepare(llm, ROWS, wd)
    requests = f"{run['run_uri']}/requests/00000.jsonl"
    _cut(requests, -30)  # the 40th line loses its end

    with pytest.raises(CorruptRunError) as error:
        steps.run_online(run, llm=llm)
    assert "requests/00000.jsonl" in str(error.value) and "line 40" in str(error.value)
    assert not is_retryable(error.value)
    assert _sent(sim) == 39  # every intact request was sent and its answer stored
    assert steps.status(run)["totals"]["succeeded"] == 39
    with pytest.raises(CorruptRunError, match="line 40 is cut short"):
        steps.finalize(run, llm=llm)  # never 39 rows without an error

    # The way back the message gives: move the run aside, prepare again; nothing paid twice.
    assert "-damaged" in str(error.value)
    os.rename(run["run_uri"], run["run_uri"] + "-damaged")
    again = steps.prepare(llm, ROWS, wd)
    assert again["run_id"] == run["run_id"] and again["reused_responses"] == 39
    steps.run_online(again, llm=llm)
    assert _sent(sim) == 40
    assert steps.finalize(again, llm=llm)["rows"] == 40


def test_request_lines_cut_off_at_a_line_end_are_an_error_too(sim, params, wd):
    llm = Topic("gpt-4o-mini", backend_params=params())
    run = steps.prepare(llm, ROWS, wd)
    steps.run_online(run, llm=llm)
    requests = Path(run["run_uri"]) / "requests" / "00000.jsonl"
    lines = requests.read_bytes().splitlines(keepends=True)
    requests.write_bytes(b"".join(lines[:37]))
    with pytest.raises(CorruptRunError, match="holds 37 requests, the manifest says 40"):
        steps.finalize(run, llm=llm)
    lines[5] = b'{"id": "x"}\n'
    requests.write_bytes(b"".join(lines))
    with pytest.raises(CorruptRunError, match=r"line 6 has no row, messages, input"):
        steps.finalize(run, llm=llm)


def test_a_torn_request_line_stops_a_batch_before_anything_is_submitted(sim, params, wd):
    batch_params = {k: v for k, v in params().items() if k != "seconds_to_pause_on_rate_limit"}
    llm = Topic("gpt-4o-mini", batch=True, backend_params=batch_params)
    run = steps.prepare(llm, ROWS, wd)
    _cut(f"{run['run_uri']}/requests/00000.jsonl", -30)
    with pytest.raises(CorruptRunError, match="line 40"):
        steps.advance(run, "00000", llm=llm)
    assert sim.stats()["batches_created"] == 0 and sim.stats()["files_created"] == 0


# ----------------------------------------------------------------------------- the manifest
@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda data: data[: len(data) // 2], "not valid JSON"),
        (lambda data: b"[1, 2]", "holds a JSON list, not an object"),
        (lambda data: json.dumps({**json.loads(data), "shards": None}).encode(), "'shards'"),
        (lambda data: json.dumps({**json.loads(data), "shards": [7]}).encode(), "shard 0"),
    ],
    ids=["truncated", "a list", "no shards", "a bad shard"],
)
def test_a_damaged_manifest_is_named_by_every_step(sim, params, wd, damage, problem):
    llm = Topic("gpt-4o-mini", backend_params=params())
    first = llm(ROWS[:4], working_dir=wd)
    manifest = Path(first.cache_dir) / "manifest.json"
    manifest.write_bytes(damage(manifest.read_bytes()))
    calls = {
        "llm()": lambda: llm(ROWS[:4], working_dir=wd),
        "prepare": lambda: steps.prepare(llm, ROWS[:4], wd),
        "run_online": lambda: steps.run_online(first.cache_dir, llm=llm),
        "finalize": lambda: steps.finalize(first.cache_dir, llm=llm),
        "status": lambda: steps.status(first.cache_dir),
        "load_response": lambda: steps.load_response(first.cache_dir, llm=llm),
    }
    for name, call in calls.items():
        with pytest.raises(CorruptRunError) as error:
            call()
        assert "manifest.json is damaged" in str(error.value), name
        assert problem in str(error.value), name
        assert not is_retryable(error.value), name
    assert _sent(sim) == 4


# ----------------------------------------------------------------------------- derived files
def test_damaged_or_missing_output_files_are_rewritten_by_the_next_call(sim, params, wd):
    llm = Topic("gpt-4o-mini", backend_params=params())
    first = llm(ROWS[:6], working_dir=wd)
    run = Path(first.cache_dir)
    expected = first.dataset.to_list()

    (run / "output" / "data-00000.arrow").unlink()
    with pytest.raises(CorruptRunError, match=r"output/data-00000.arrow is missing: finalize"):
        steps.load_response(first.cache_dir, llm=llm)
    assert llm(ROWS[:6], working_dir=wd).dataset.to_list() == expected  # rewritten

    _cut(run / "output" / "data-00000.arrow", 100)
    with pytest.raises(CorruptRunError, match=r"data-00000.arrow is damaged"):
        steps.load_response(first.cache_dir, llm=llm)
    assert llm(ROWS[:6], working_dir=wd).dataset.to_list() == expected

    for damaged in (b'{"outputs": ["output/da', b'{"outputs": 3}'):
        (run / "output" / "stats.json").write_bytes(damaged)
        with pytest.raises(CorruptRunError, match=r"stats.json is damaged.*finalize the run again"):
            steps.load_response(first.cache_dir, llm=llm)
        assert llm(ROWS[:6], working_dir=wd).dataset.to_list() == expected
    assert steps.load_response(first.cache_dir, llm=llm).dataset.to_list() == expected
    assert _sent(sim) == 6


def test_a_damaged_failed_requests_line_is_named_and_finalizing_again_rewrites_it(sim, params, wd):
    llm = Topic("gpt-4o-mini", backend_params=params())
    rows = [{"t": 0, "generation_params": {"max_tokens": 2}}, *ROWS[1:4]]  # the first one fails
    first = llm(rows, working_dir=wd)
    (failed,) = first.get_failed_requests()
    path, sent = Path(first.failed_requests_path), _sent(sim)

    _cut(path, -20)
    with pytest.raises(CorruptRunError, match=r"failed_requests.jsonl line 1 is damaged.*finalize"):
        list(first.get_failed_requests())
    path.write_bytes(b"[1, 2]\n")
    with pytest.raises(CorruptRunError, match=r"line 1 is damaged \(not a JSON object\)"):
        list(first.get_failed_requests())

    again = steps.finalize(first.cache_dir, llm=llm)
    assert list(steps.load_response(again["run_uri"], llm=llm).get_failed_requests()) == [failed]
    assert _sent(sim) == sent  # nothing sent again


def test_a_damaged_publish_marker_is_named_and_publishing_again_replaces_it(sim, params, wd):
    llm = Topic("gpt-4o-mini", backend_params=params())
    run = steps.prepare(llm, ROWS[:5], wd)
    steps.run_online(run, llm=llm)
    output_uri = os.path.join(wd, "published")
    steps.finalize(run, llm=llm, output_uri=output_uri)
    marker = Path(output_uri) / "_SUCCESS"
    _cut(marker, 40)
    with pytest.raises(CorruptRunError, match=r"_SUCCESS is damaged.*finalize the run"):
        published_files(output_uri)
    marker.write_bytes(b'{"files": "part.parquet"}')
    with pytest.raises(CorruptRunError, match="lists no files"):
        published_files(output_uri)
    steps.finalize(run, llm=llm, output_uri=output_uri)
    assert len(published_files(output_uri)) == 1


# ----------------------------------------------------------------------------- unusable places
def test_a_working_dir_or_output_uri_that_is_a_file_is_named_before_anything_is_sent(
    sim, params, wd
):
    llm = Topic("gpt-4o-mini", backend_params=params())
    a_file = Path(wd) / "not-a-dir"
    a_file.write_text("x")
    for working_dir in (str(a_file), str(a_file / "below")):
        with pytest.raises(StorageAccessError) as error:
            llm(ROWS[:3], working_dir=working_dir)
        assert str(a_file) in str(error.value) and "is a file" in str(error.value)
        assert not is_retryable(error.value)
    assert _sent(sim) == 0
    run = steps.prepare(llm, ROWS[:3], str(Path(wd) / "runs"))
    steps.run_online(run, llm=llm)
    with pytest.raises(StorageAccessError, match="not-a-dir"):
        steps.finalize(run, llm=llm, output_uri=str(a_file))


def test_a_directory_where_a_run_file_belongs_is_named(sim, params, wd):
    llm = Topic("gpt-4o-mini", backend_params=params())
    run = steps.prepare(llm, ROWS[:3], wd)
    responses = Path(run["run_uri"]) / "responses"
    (responses / "00000.jsonl").mkdir(parents=True)
    with pytest.raises(StorageAccessError) as error:
        steps.run_online(run, llm=llm)
    assert "responses/00000.jsonl" in str(error.value) and "is a directory" in str(error.value)
    assert not is_retryable(error.value) and _sent(sim) == 0


_DENIED = """
import json, sys
from curator_flows import LLM, steps
from curator_flows.errors import is_retryable

class Topic(LLM):
    def prompt(self, input):
        return f"topic {input['t']}"

    def parse(self, input, response):
        return {"t": input["t"], "response": response}

llm = Topic("gpt-4o-mini", backend_params={"base_url": sys.argv[1], "api_key": "k"})
calls = {
    "prepare": lambda: steps.prepare(llm, [{"t": 1}], sys.argv[2]),
    "finalize": lambda: steps.finalize(sys.argv[3], llm=llm),
    "dataset": lambda: steps.prepare(llm, sys.argv[4], sys.argv[5]),
}
out = {}
for name, call in calls.items():
    try:
        call()
        out[name] = None
    except Exception as exc:
        out[name] = [type(exc).__name__, is_retryable(exc), str(exc)]
print(json.dumps(out))
"""


def test_permission_denied_is_a_permanent_error_naming_the_path(sim, params, tmp_path):
    """Run in a child that cannot bypass file permissions (as root: without the capabilities
    that override them)."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions are not enforced")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    llm = Topic("gpt-4o-mini", backend_params=params())
    run = steps.prepare(llm, ROWS[:3], str(tmp_path / "runs"))
    steps.run_online(run, llm=llm)
    locked = tmp_path / "locked"
    locked.mkdir()
    data = tmp_path / "rows.jsonl"
    data.write_text('{"t": 1}\n')
    for path in (locked, Path(run["run_uri"]), data):
        path.chmod(0o000 if path == data else 0o555)
    try:
        child = subprocess.run(
            [*prefix, sys.executable, "-c", _DENIED, sim.base_url, str(locked / "wd"),
             run["run_uri"], str(data), str(tmp_path / "other")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        for path in (locked, Path(run["run_uri"]), data):
            path.chmod(0o755)
    assert child.returncode == 0, child.stderr
    outcome = json.loads(child.stdout.strip().splitlines()[-1])
    for name, where in (("prepare", locked), ("finalize", run["run_uri"]), ("dataset", data)):
        kind, retryable, message = outcome[name]
        assert kind == "StorageAccessError" and not retryable, (name, outcome[name])
        assert str(where) in message and "permission denied" in message, (name, message)
