"""``curator-flows view``: the live page's server against real runs made through the simulator
over HTTP (its JSON endpoints, what it refuses, the CLI), and the page itself in a real
headless Chromium (rows, paging, search, the progress of a pending run, model output shown as
text)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import BaseModel, Field

from curator_flows import LLM, Credentials, steps
from curator_flows.viewer import Viewer

sys.path.insert(0, str(Path(__file__).parent / "support"))

from chromium import dump_dom, needs_chromium  # noqa: E402

PAYLOAD = "<script>document.body.setAttribute('data-pwned','1')</script><img src=x>"
PAYLOAD_PATTERN = r"^<script>document\.body\.setAttribute\('data-pwned','1'\)</script><img src=x>$"


class Topics(LLM):
    def prompt(self, input: dict) -> str:
        return f"write about topic-{input['n']}{input.get('fault', '')}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "text": response}


class Markup(BaseModel):
    html: str = Field(
        pattern=r"^<script>document\.body\.setAttribute\('data-pwned','1'\)</script><img src=x>$"
    )


class Hostile(LLM):
    """Every answer holds markup (the simulator writes strings matching the pattern)."""

    response_format = Markup

    def prompt(self, input: dict) -> str:
        return f"markup {input['n']}"

    def parse(self, input: dict, response: Markup) -> dict:
        return {"n": input["n"], "html": response.html}


def finished_run(params, wd: str, rows: int = 12) -> str:
    llm = Topics("gpt-4o-mini", backend_params=params(shard_size=5, in_mtok_cost=1.0))
    return llm([{"n": i} for i in range(rows)], working_dir=wd).cache_dir


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET"):
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def get_json(url: str):
    status, _, body = get(url)
    assert status == 200, body
    return json.loads(body)


def stored_answers(run_uri: str) -> dict[str, str]:
    answers = {}
    for path in sorted(Path(run_uri, "responses").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            answers[record["id"]] = record.get("content")
    return answers


# ----------------------------------------------------------------------------- endpoints
def test_overview_and_pages_of_a_finished_run(sim, params, wd):
    run_uri = finished_run(params, wd)
    answers = stored_answers(run_uri)
    with Viewer(run_uri) as viewer:
        assert viewer.server.server_address[0] == "127.0.0.1"
        overview = get_json(viewer.url + "api/overview")
        totals = overview["status"]["totals"]
        assert (totals["requests"], totals["succeeded"], totals["pending"]) == (12, 12, 0)
        assert totals["cost"] > 0 and totals["in_flight"] == 0
        assert overview["status"]["finalized"] and overview["finalized"]["rows"] == 12
        assert overview["failures"]["total"] == 0

        page = get_json(viewer.url + "api/rows?page=2&size=5")
        assert (page["page"], page["pages"], page["total"]) == (2, 3, 12)
        assert [row["row"] for row in page["rows"]] == [5, 6, 7, 8, 9]
        for row in page["rows"]:
            assert row["input"] == {"n": row["row"]}
            assert row["prompt"] == [{"role": "user", "content": f"write about topic-{row['row']}"}]
            assert row["status"] == "succeeded" and row["response"] == answers[row["id"]]
            assert row["outputs"] == [{"n": row["row"], "text": row["response"]}]
        last = get_json(viewer.url + "api/rows?page=3&size=5")
        assert [row["row"] for row in last["rows"]] == [10, 11]  # across the shard boundary


def test_search_narrows_the_rows_and_says_when_its_limit_stopped_it(sim, params, wd):
    run_uri = finished_run(params, wd)
    answer = stored_answers(run_uri)
    with Viewer(run_uri) as viewer:
        found = get_json(viewer.url + "api/rows?q=TOPIC-7")
        assert [row["row"] for row in found["rows"]] == [7]
        assert not found["more"] and not found["stopped_early"]

        some_row = get_json(viewer.url + "api/rows?page=1&size=12")["rows"][10]
        words = answer[some_row["id"]].split()
        phrase = " ".join(words[:3])  # text of the response only
        hits = get_json(viewer.url + "api/rows?q=" + urllib.request.quote(phrase))
        assert some_row["row"] in [row["row"] for row in hits["rows"]]

        first = get_json(viewer.url + "api/rows?q=topic&size=5")
        assert [row["row"] for row in first["rows"]] == [0, 1, 2, 3, 4] and first["more"]
        second = get_json(viewer.url + "api/rows?q=topic&size=5&page=2")
        assert [row["row"] for row in second["rows"]] == [5, 6, 7, 8, 9]

        limited = viewer.view.search("topic-11", scan_limit=5)
        assert limited["rows"] == [] and limited["stopped_early"]
        assert limited["scanned"] == 5


def test_progress_of_a_run_still_pending_and_the_shard_a_worker_holds(sim, params, wd):
    from curator_flows.lease import ShardLeases
    from curator_flows.store import RunStore

    llm = Topics("gpt-4o-mini", backend_params=params(shard_size=4))
    run = steps.prepare(llm, [{"n": i} for i in range(10)], wd)
    steps.run_online(run, "00000", llm=llm)
    with Viewer(run["run_uri"]) as viewer:
        overview = get_json(viewer.url + "api/overview")
        read = time.monotonic()
        totals = overview["status"]["totals"]
        assert (totals["succeeded"], totals["pending"], totals["in_flight"]) == (4, 6, 0)
        assert [s["state"] for s in overview["status"]["shards"]] == ["done", "pending", "pending"]
        assert overview["finalized"] is None
        assert "response files" in overview["failures"]["source"]
        rows = get_json(viewer.url + "api/rows?page=2&size=4")["rows"]
        assert {row["status"] for row in rows} == {"pending"}
        assert all(row["outputs"] is None and row["response"] is None for row in rows)

        steps.run_online(run, "00001", llm=llm)  # the run goes on
        again = get_json(viewer.url + "api/overview")
        if time.monotonic() - read < overview["refresh_seconds"] - 0.5:  # not re-read yet
            assert again["status"]["read_at"] == overview["status"]["read_at"]
        deadline = time.monotonic() + 60
        while get_json(viewer.url + "api/overview")["status"]["totals"]["succeeded"] != 8:
            assert time.monotonic() < deadline, "the progress never refreshed"
            time.sleep(0.5)

    leases = ShardLeases(RunStore(run["run_uri"]), ["00002"])  # a worker sending shard 00002
    leases.acquire()
    try:
        with Viewer(run["run_uri"]) as viewer:
            shards = get_json(viewer.url + "api/overview")["status"]["shards"]
            busy = {s["shard"]: s["in_flight"] for s in shards}
            assert busy == {"00000": 0, "00001": 0, "00002": 2}
            assert shards[2]["lease"]["expires_in"] > 0 and "lease" not in shards[1]
    finally:
        leases.release()


def test_failures_are_grouped_by_reason_with_their_messages(sim, params, wd):
    llm = Topics("gpt-4o-mini", backend_params=params(shard_size=5, max_retries=1))
    rows = [{"n": i} for i in range(8)]
    rows[2]["fault"] = rows[5]["fault"] = " [[sim:500]]"
    rows[6]["fault"] = " [[sim:length]]"
    run = steps.prepare(llm, rows, wd)
    steps.run_online(run, llm=llm)
    with Viewer(run["run_uri"]) as viewer:  # before finalize: the standing failure lines
        failures = get_json(viewer.url + "api/overview")["failures"]
        assert failures["total"] == 3
        by_reason = {entry["reason"]: entry for entry in failures["reasons"]}
        assert by_reason["http_500"]["count"] == 2
        assert "500" in by_reason["http_500"]["examples"][0]["message"]
        assert sum(entry["count"] for entry in failures["reasons"]) == 3
        failed = get_json(viewer.url + "api/rows?size=8")["rows"]
        assert [row["row"] for row in failed if row["status"] == "failed"] == [2, 5, 6]
    steps.finalize(run, llm=llm)
    with Viewer(run["run_uri"]) as viewer:  # after: finalize's list, rows known
        failures = get_json(viewer.url + "api/overview")["failures"]
        assert "failed_requests.jsonl" in failures["source"] and failures["total"] == 3
        counts = {entry["reason"]: entry["count"] for entry in failures["reasons"]}
        assert counts["http_500"] == 2 and sum(counts.values()) == 3
        examples = [e for entry in failures["reasons"] for e in entry["examples"]]
        assert {example["row"] for example in examples} <= {2, 5, 6}  # one per distinct message
        assert 6 in {example["row"] for example in examples}


def test_a_page_reads_only_the_shards_it_shows(sim, params, wd):
    run_uri = finished_run(params, wd)
    for path in [
        *Path(run_uri, "requests").glob("00000*"),
        *Path(run_uri, "responses").glob("00000*"),
    ]:
        path.unlink()  # the first shard is gone: pages of the others do not need it
    with Viewer(run_uri) as viewer:
        page = get_json(viewer.url + "api/rows?page=3&size=5")
        assert [row["row"] for row in page["rows"]] == [10, 11]
        assert page["rows"][0]["outputs"][0]["n"] == 10
        status, _, body = get(viewer.url + "api/rows?page=1&size=5")
        assert status == 500 and b"FileNotFoundError" in body


def test_the_viewer_never_writes_to_the_run(sim, params, wd, tmp_path):
    """Not even the merge of answers spilled on this machine, which every step does first."""
    from curator_flows.spill import spill
    from curator_flows.store import RunStore, dumps

    llm = Topics("gpt-4o-mini", backend_params=params(shard_size=4, spill_dir=str(tmp_path)))
    run = steps.prepare(llm, [{"n": i} for i in range(6)], wd)
    steps.run_online(run, "00000", llm=llm)
    pending = next(RunStore(run["run_uri"]).iter_lines("requests/00001.jsonl"))
    line = {"id": pending["id"], "content": "spilled answer", "usage": [1, 1], "cost": 0.0}
    spill(RunStore(run["run_uri"]), run["run_id"], {"00001": dumps(line)}, str(tmp_path))
    before = {p: p.stat().st_mtime_ns for p in Path(run["run_uri"]).rglob("*")}
    with Viewer(run["run_uri"]) as viewer:
        assert get_json(viewer.url + "api/overview")["status"]["totals"]["succeeded"] == 4
        get_json(viewer.url + "api/rows?q=topic")
        get_json(viewer.url + "api/rows?page=2&size=2")
        get(viewer.url)
    assert {p: p.stat().st_mtime_ns for p in Path(run["run_uri"]).rglob("*")} == before
    assert steps.status(run)["totals"]["succeeded"] == 5  # a step merges the spilled answer


def test_requests_for_another_host_other_methods_or_bad_parameters_are_refused(sim, params, wd):
    run_uri = finished_run(params, wd, rows=3)
    with Viewer(run_uri) as viewer:
        status, headers, body = get(viewer.url)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert get(viewer.url, {"Host": f"attacker.example:{viewer.port}"})[0] == 421
        assert get(f"http://localhost:{viewer.port}/api/overview")[0] == 200
        assert get(viewer.url + "api/overview", method="POST")[0] == 501
        assert get(viewer.url + "nothing-here")[0] == 404
        status, _, body = get(viewer.url + "api/rows?page=zero")
        assert status == 400 and b"page must be a whole number" in body


def test_a_run_on_s3_is_read_with_its_storage_options(sim, params, s3_bucket, s3_endpoint):
    options = {"endpoint_url": s3_endpoint}
    credentials = Credentials(storage_options=options)
    llm = Topics("gpt-4o-mini", backend_params=params(shard_size=3))
    run = steps.prepare(
        llm, [{"n": i} for i in range(5)], f"{s3_bucket}/runs", credentials=credentials
    )
    steps.run_online(run, llm=llm, credentials=credentials)
    steps.finalize(run, llm=llm, credentials=credentials)
    with Viewer(run["run_uri"], options) as viewer:
        assert get_json(viewer.url + "api/overview")["status"]["totals"]["succeeded"] == 5
        rows = get_json(viewer.url + "api/rows?page=2&size=3")["rows"]
        assert [(row["row"], row["outputs"][0]["n"]) for row in rows] == [(3, 3), (4, 4)]


def test_cli_view_prints_its_url_and_serves_until_interrupted(sim, params, wd, tmp_path):
    run_uri = finished_run(params, wd, rows=3)
    child = subprocess.Popen(
        [sys.executable, "-m", "curator_flows.cli", "view", run_uri, "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        url = line.split(" at ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        assert get_json(url + "api/overview")["status"]["totals"]["succeeded"] == 3
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    missing = subprocess.run(
        [sys.executable, "-m", "curator_flows.cli", "view", str(tmp_path / "nope"), "--no-browser"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1 and "no prepared run" in missing.stderr


# ----------------------------------------------------------------------------- in a browser
@needs_chromium
def test_the_page_in_a_browser_shows_rows_pages_and_searches(sim, params, wd):
    run_uri = finished_run(params, wd)
    answers = stored_answers(run_uri)
    with Viewer(run_uri) as viewer:
        first = dump_dom(viewer.url + "?size=5")
        assert first.state == "ready", first.by_id("error").text
        assert first.row_numbers() == [0, 1, 2, 3, 4]
        row = first.rows()[2]
        assert answers[row.attrs["data-id"]] in row.text and "topic-2" in row.text
        assert first.value("succeeded") == "12" and first.value("pending") == "0"
        assert first.by_id("pager").attrs["data-pages"] == "3"

        second = dump_dom(viewer.url + "?page=2&size=5")
        assert second.row_numbers() == [5, 6, 7, 8, 9]
        assert second.by_id("pager").attrs["data-page"] == "2"

        found = dump_dom(viewer.url + "?q=topic-7")
        assert found.row_numbers() == [7]


@needs_chromium
def test_the_page_in_a_browser_shows_the_progress_of_a_pending_run(sim, params, wd):
    llm = Topics("gpt-4o-mini", backend_params=params(shard_size=4))
    run = steps.prepare(llm, [{"n": i} for i in range(10)], wd)
    steps.run_online(run, "00000", llm=llm)
    with Viewer(run["run_uri"]) as viewer:
        dom = dump_dom(viewer.url + "?page=2&size=4")
        assert dom.state == "ready", dom.by_id("error").text
        assert (dom.value("succeeded"), dom.value("pending"), dom.value("requests")) == (
            "4",
            "6",
            "10",
        )
        assert [r.attrs["data-status"] for r in dom.rows()] == ["pending"] * 4
        assert "6 pending" in dom.by_id("progress-note").text
        shards = dom.root.find_all("tr", data_shard=True)
        assert [s.attrs["data-shard"] for s in shards] == ["00000", "00001", "00002"]


@needs_chromium
def test_model_output_holding_markup_is_shown_as_text(sim, params, wd):
    llm = Hostile("gpt-4o-mini", backend_params=params(shard_size=5))
    run_uri = llm([{"n": i} for i in range(3)], working_dir=wd).cache_dir
    with Viewer(run_uri) as viewer:
        _, _, page = get(viewer.url)
        assert b"<img" not in page  # the page itself holds no data, let alone markup
        dom = dump_dom(viewer.url)
    assert dom.state == "ready", dom.by_id("error").text
    body = dom.root.find("body")
    assert "data-pwned" not in body.attrs
    assert not dom.root.find_all("img")
    assert len(dom.root.find_all("script")) == 2  # the page's data and its own script
    shown = [node.text for row in dom.rows() for node in row.find_all("pre")]
    assert any(PAYLOAD in text for text in shown)  # the characters, as text
