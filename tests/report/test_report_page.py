"""``_report.html`` beside a published dataset: written after the marker, never failing the
publish, holding a bounded sample whose model output is text, and the same page in a real
headless Chromium (rows, paging, search within the sample)."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from curator_flows import LLM, Credentials, steps
from curator_flows.publish import MARKER, read_marker
from curator_flows.report.reader import RunView
from curator_flows.report.render import REPORT_NAME, static_data

sys.path.insert(0, str(Path(__file__).parents[1] / "support"))

from chromium import dump_dom, needs_chromium  # noqa: E402

PAYLOAD = "</script><script>document.body.setAttribute('data-pwned','1')</script>"


class Topics(LLM):
    def prompt(self, input: dict) -> str:
        return f"write about topic-{input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "text": response}


class Markup(BaseModel):
    html: str = Field(
        pattern=r"^</script><script>document\.body\.setAttribute\('data-pwned','1'\)</script>$"
    )


class Hostile(LLM):
    response_format = Markup

    def prompt(self, input: dict) -> str:
        return f"markup {input['n']}"

    def parse(self, input: dict, response: Markup) -> dict:
        return {"n": input["n"], "html": response.html}


def embedded(page: str) -> dict:
    """The data a static page embeds."""
    match = re.search(r'<script type="application/json" id="cf-data">(.*?)</script>', page, re.S)
    assert match is not None
    return json.loads(match.group(1))


def publish(llm: LLM, rows: int, wd: str, output_uri: str, options: dict | None = None):
    credentials = Credentials(storage_options=options or {})
    run = steps.prepare(llm, [{"n": i} for i in range(rows)], wd, credentials=credentials)
    steps.run_online(run, llm=llm, credentials=credentials)
    return run, steps.finalize(run, llm=llm, output_uri=output_uri, credentials=credentials)


def test_a_publish_writes_the_report_beside_the_data_not_listed_in_the_marker(
    sim, params, wd, tmp_path
):
    output_uri = str(tmp_path / "published" / "date=2026-12-04")
    llm = Topics("gpt-4o-mini", backend_params=params(shard_size=5))
    run, _ = publish(llm, 12, wd, output_uri)
    report = Path(output_uri, REPORT_NAME)
    marker = read_marker(output_uri)
    assert report.exists() and REPORT_NAME not in [entry["path"] for entry in marker["files"]]
    listed = pq.read_table(output_uri, ignore_prefixes=[".", "_", "README.md"])  # as documented
    assert listed.num_rows == 12  # a listing reader skips it, as it skips _SUCCESS
    data = embedded(report.read_text())
    assert data["mode"] == "static" and data["facts"]["run_id"] == run["run_id"]
    assert [row["row"] for row in data["sample"]["rows"]] == list(range(12))
    assert data["sample"]["of"] == 12 and not data["sample"]["cut_by_size"]
    assert data["published"]["rows"] == 12 and data["published"]["output_uri"] == output_uri
    assert data["status"]["totals"]["succeeded"] == 12 and data["failures"]["total"] == 0
    assert data["sample"]["rows"][3]["outputs"] == [
        {"n": 3, "text": data["sample"]["rows"][3]["response"]}
    ]

    written = report.stat().st_mtime_ns
    steps.finalize(run, llm=llm, output_uri=output_uri)  # the same publish: nothing rewritten
    assert report.stat().st_mtime_ns == written
    report.unlink()  # lost (a crash right after the marker): the next finalize writes it
    steps.finalize(run, llm=llm, output_uri=output_uri)
    assert report.exists() and read_marker(output_uri) == marker


def test_a_report_that_cannot_be_made_never_fails_the_publish(
    sim, params, wd, tmp_path, monkeypatch, caplog
):
    import curator_flows.report.render as render

    def broken(*args, **kwargs):
        raise MemoryError("no room for a report")

    monkeypatch.setattr(render, "render_report", broken)
    output_uri = str(tmp_path / "published")
    with caplog.at_level(logging.WARNING, logger="curator_flows.report.render"):
        _, result = publish(Topics("gpt-4o-mini", backend_params=params()), 3, wd, output_uri)
    assert result["output_uri"] == output_uri and read_marker(output_uri)["rows"] == 3
    assert not Path(output_uri, REPORT_NAME).exists()
    assert "complete without it" in caplog.text and "no room for a report" in caplog.text


def test_the_report_on_s3_is_written_beside_the_data(sim, params, s3_bucket, s3_endpoint):
    options = {"endpoint_url": s3_endpoint}
    output_uri = f"{s3_bucket}/published/recipes"
    llm = Topics("gpt-4o-mini", backend_params=params(shard_size=2))
    publish(llm, 3, f"{s3_bucket}/runs", output_uri, options)
    fs, root = fsspec.core.url_to_fs(output_uri, **options)
    data = embedded(fs.cat_file(f"{root}/{REPORT_NAME}").decode())
    assert [row["row"] for row in data["sample"]["rows"]] == [0, 1, 2]
    assert fs.exists(f"{root}/{MARKER}")


def test_the_sample_is_bounded_in_rows_text_and_bytes(sim, params, wd):
    llm = Topics("gpt-4o-mini", backend_params=params(shard_size=4))
    run = llm([{"n": i} for i in range(10)], working_dir=wd)
    view = RunView(run.cache_dir)
    data = static_data(view, sample_rows=6, cell_chars=8)
    rows = data["sample"]["rows"]
    assert len(rows) == 6 and data["sample"]["of"] == 10
    assert all(row["response"].endswith("more characters]") for row in rows)
    small = static_data(view, sample_rows=6, max_bytes=1500)["sample"]
    assert small["cut_by_size"] and 0 < len(small["rows"]) < 6


def test_model_output_in_a_report_is_never_markup(sim, params, wd, tmp_path):
    output_uri = str(tmp_path / "published")
    publish(Hostile("gpt-4o-mini", backend_params=params()), 2, wd, output_uri)
    page = Path(output_uri, REPORT_NAME).read_text()
    assert page.count("<script") == 2 and page.count("</script>") == 2  # data and the script
    assert "data-pwned" in page  # the text is there, escaped inside the data block
    assert embedded(page)["sample"]["rows"][0]["outputs"][0]["html"] == PAYLOAD


@needs_chromium
def test_the_static_report_in_a_browser_pages_and_searches_its_sample(sim, params, wd, tmp_path):
    output_uri = str(tmp_path / "published")
    publish(Topics("gpt-4o-mini", backend_params=params(shard_size=5)), 12, wd, output_uri)
    url = Path(output_uri, REPORT_NAME).as_uri()
    first = dump_dom(url + "?size=5")
    assert first.state == "ready", first.by_id("error").text
    assert first.row_numbers() == [0, 1, 2, 3, 4]
    assert "sample" in first.by_id("mode-note").text
    assert first.value("succeeded") == "12" and first.value("published_rows") == "12"
    assert dump_dom(url + "?page=2&size=5").row_numbers() == [5, 6, 7, 8, 9]
    assert dump_dom(url + "?page=3&size=5").row_numbers() == [10, 11]
    assert dump_dom(url + "?q=topic-11").row_numbers() == [11]


@needs_chromium
def test_the_static_report_in_a_browser_shows_markup_as_text(sim, params, wd, tmp_path):
    output_uri = str(tmp_path / "published")
    publish(Hostile("gpt-4o-mini", backend_params=params()), 2, wd, output_uri)
    dom = dump_dom(Path(output_uri, REPORT_NAME).as_uri())
    assert dom.state == "ready", dom.by_id("error").text
    assert "data-pwned" not in dom.root.find("body").attrs
    assert len(dom.root.find_all("script")) == 2
    texts = [node.text for row in dom.rows() for node in row.find_all("pre")]
    assert any(PAYLOAD in text for text in texts)


class Picky(LLM):
    def prompt(self, input: dict) -> str:
        return f"item {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        if input["n"] % 4 == 0:
            raise ValueError(f"no good: {input['n']}")
        return {"n": input["n"]}


def test_the_report_counts_answers_as_status_does_and_parse_failures_by_reason(sim, params, wd):
    run = Picky("gpt-4o-mini", backend_params=params())(
        [{"n": i} for i in range(8)], working_dir=wd
    )
    data = static_data(RunView(run.cache_dir))
    assert data["status"]["totals"]["succeeded"] == 8 and data["status"]["totals"]["failed"] == 0
    stats = data["finalized"]["request_stats"]
    assert (stats["succeeded"], stats["failed"]) == (6, 2)
    assert data["failures"]["total"] == 2
    examples = [e for entry in data["failures"]["reasons"] for e in entry["examples"]]
    assert sorted(e["row"] for e in examples) == [0, 4]
    assert all("no good" in e["message"] for e in examples)
    rows = data["sample"]["rows"]
    assert [row["row"] for row in rows if row["status"] == "parse_failed"] == [0, 4]
