"""What a dataset can be: in-memory tables, files and directories on local disk and S3, previous
runs, published outputs, strings and conversations as Curator passes them."""

from __future__ import annotations

import datetime
import gzip
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curator_flows import LLM, Credentials, InputError, steps
from curator_flows.inputs import CHUNK_ROWS, is_data_reference, iter_rows

UTC = datetime.UTC


def table_rows(n: int) -> list[dict]:
    start = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    return [
        {"prompt": f"row {i}", "n": i, "when": start + datetime.timedelta(hours=i)}
        for i in range(n)
    ]


def arrow_table(n: int) -> pa.Table:
    return pa.Table.from_pylist(table_rows(n))


# ----------------------------------------------------------------------------- in-memory tables
def test_a_dataframe_gives_its_rows_not_its_column_names():
    import pandas as pd

    frame = pd.DataFrame(table_rows(CHUNK_ROWS * 2 + 5))
    rows = list(iter_rows(frame))
    assert len(rows) == CHUNK_ROWS * 2 + 5
    assert rows[3]["prompt"] == "row 3" and rows[3]["n"] == 3
    assert isinstance(rows[3]["when"], datetime.datetime)
    assert rows[3]["when"] == datetime.datetime(2026, 1, 1, 3, tzinfo=UTC)


def test_a_dataframe_with_duplicated_columns_is_refused():
    import pandas as pd

    frame = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(InputError, match=r"duplicated column names \['a'\]"):
        list(iter_rows(frame))


def test_arrow_tables_batches_readers_and_datasets():
    import pyarrow.dataset as pads

    table = arrow_table(CHUNK_ROWS + 7)
    expected = table.to_pylist()
    assert list(iter_rows(table)) == expected
    assert list(iter_rows(table.to_batches()[0])) == expected
    assert list(iter_rows(pa.RecordBatchReader.from_batches(table.schema, table.to_batches())))
    assert list(iter_rows(pads.dataset(table))) == expected


def test_timestamps_come_out_as_arrow_gives_them_zone_fold_and_order_included():
    start = datetime.datetime(2026, 10, 24, 23, tzinfo=UTC)  # 02:00-03:00 Paris happens twice
    times = [start + datetime.timedelta(minutes=13 * i) if i % 4 else None for i in range(300)]
    table = pa.table(
        {
            "paris": pa.array(times, pa.timestamp("us", tz="Europe/Paris")),
            "text": [f"t{i}" for i in range(300)],
            "offset": pa.array(times, pa.timestamp("ms", tz="+05:30")),
            "naive": pa.array([t and t.replace(tzinfo=None) for t in times], pa.timestamp("s")),
            "nanos": pa.array(times, pa.timestamp("ns", tz="UTC")),
        }
    )
    rows = list(iter_rows(table))
    expected = table.to_pylist()
    assert [list(row) for row in rows] == [list(row) for row in expected]  # column order
    assert [repr(row) for row in rows] == [repr(row) for row in expected]
    assert any(row["paris"] is not None and row["paris"].fold for row in rows)


def test_a_hugging_face_dataset_in_batches_and_a_dataset_dict_refused():
    import datasets

    dataset = datasets.Dataset.from_list([{"topic": f"t{i}", "n": i} for i in range(2100)])
    assert list(iter_rows(dataset)) == list(dataset)
    assert list(iter_rows(dataset.select([5, 2]))) == [
        {"topic": "t5", "n": 5},
        {"topic": "t2", "n": 2},
    ]
    splits = datasets.DatasetDict({"train": dataset, "test": dataset})
    with pytest.raises(InputError, match=r"splits \['test', 'train'\].*dataset\['train'\]"):
        list(iter_rows(splits))


def test_importing_inputs_imports_no_table_library():
    code = (
        "import sys, curator_flows.inputs as i; "
        "rows = list(i.iter_rows(['a', {'b': 1}, [{'role': 'user', 'content': 'c'}]])); "
        "print([m for m in ('pandas', 'pyarrow', 'datasets', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- strings, lists
def test_strings_conversations_and_rows():
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert list(iter_rows("Mathematics")) == ["Mathematics"]
    assert list(iter_rows(["a", "b"])) == ["a", "b"]
    assert list(iter_rows(conversation)) == [conversation]  # one conversation, one row
    assert list(iter_rows([conversation, conversation])) == [conversation, conversation]
    assert list(iter_rows(None)) == [{}]
    assert list(iter_rows([])) == []
    # rows that merely have "role" and "content" columns are rows
    people = [{"role": "teacher", "content": "maths"}, {"role": "pupil", "content": "art"}]
    assert list(iter_rows(people)) == people


def test_what_is_not_a_dataset_is_refused_with_the_row_named():
    with pytest.raises(InputError, match="not a single dict"):
        list(iter_rows({"prompt": "x"}))
    with pytest.raises(InputError, match="must be iterable"):
        list(iter_rows(42))
    with pytest.raises(InputError, match="row 1: a list that is not a conversation"):
        list(iter_rows(["ok", [1, 2]]))
    with pytest.raises(InputError, match="row 2: expected a dict"):
        list(iter_rows(["ok", "fine", 3.5]))


def test_the_line_between_a_prompt_and_a_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "Mathematics").mkdir()  # a bare word is a prompt even if such a file exists
    assert not is_data_reference("Mathematics")
    assert not is_data_reference("Write a poem about s3://bucket/key")
    assert not is_data_reference("unknown-scheme://x")
    assert not is_data_reference("a/b")  # has a slash, but no such path
    assert is_data_reference("./data")
    assert is_data_reference(str(tmp_path / "data"))
    for uri in ("s3://bucket/x", "gs://b/x", "gcs://b/x", "file:///tmp/x", "memory://x", "hf://x"):
        assert is_data_reference(uri), uri
    assert is_data_reference("rows.parquet") and is_data_reference("in/rows.jsonl.gz")
    with pytest.raises(InputError, match=r"no such file.*rows.parquet.*llm\(\[text\]\)"):
        list(iter_rows("rows.parquet"))
    assert list(iter_rows(["s3://bucket/x"])) == ["s3://bucket/x"]  # in a list: a prompt


# ----------------------------------------------------------------------------- files on disk
def test_parquet_by_path_pathlib_and_file_uri_in_chunks(tmp_path):
    table = arrow_table(2 * CHUNK_ROWS + 3)
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path, row_group_size=700)
    expected = table.to_pylist()
    for reference in (str(path), path, f"file://{path}"):
        rows = list(iter_rows(reference))
        assert rows == expected
    assert rows[5]["when"].tzinfo is not None


def test_jsonl_plain_and_compressed_streams_line_by_line(tmp_path):
    conversation = [{"role": "user", "content": "hello"}]
    lines = [{"n": 1}, "a plain prompt", conversation, {"n": 2}]
    text = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    (tmp_path / "rows.jsonl").write_text(text)
    with gzip.open(tmp_path / "rows.jsonl.gz", "wt") as handle:
        handle.write(text)
    assert list(iter_rows(str(tmp_path / "rows.jsonl"))) == lines
    assert list(iter_rows(str(tmp_path / "rows.jsonl.gz"))) == lines

    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(f'{{"n": {i}}}\n' for i in range(5000)) + "{oops\n")
    head = list(itertools.islice(iter_rows(str(broken)), 10))  # streamed: the end is not read
    assert head == [{"n": i} for i in range(10)]
    with pytest.raises(InputError, match=r"broken.jsonl line 5001: not valid JSON"):
        list(iter_rows(str(broken)))
    (tmp_path / "numbers.jsonl").write_text("1\n")
    with pytest.raises(InputError, match="line 1: expected a JSON object"):
        list(iter_rows(str(tmp_path / "numbers.jsonl")))


def test_arrow_ipc_file_feather_and_stream(tmp_path):
    import pyarrow.feather as feather

    table = arrow_table(CHUNK_ROWS + 1)
    feather.write_feather(table, tmp_path / "rows.feather")
    with pa.OSFile(str(tmp_path / "rows.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    assert list(iter_rows(str(tmp_path / "rows.feather"))) == table.to_pylist()
    assert list(iter_rows(str(tmp_path / "rows.arrow"))) == table.to_pylist()


def test_a_saved_hugging_face_dataset_directory(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_list([{"topic": f"t{i}", "n": i} for i in range(1500)])
    dataset.save_to_disk(str(tmp_path / "saved"), num_shards=2)
    assert list(iter_rows(str(tmp_path / "saved"))) == list(dataset)
    datasets.DatasetDict({"train": dataset, "test": dataset}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"DatasetDict with splits \['test', 'train'\]"):
        list(iter_rows(str(tmp_path / "dd")))


def test_a_directory_of_parts_and_a_glob(tmp_path):
    parts = tmp_path / "parts"
    (parts / "_temporary").mkdir(parents=True)
    pq.write_table(pa.table({"n": [1, 2]}), parts / "a.parquet")
    pq.write_table(pa.table({"n": [3]}), parts / "b.parquet")
    pq.write_table(pa.table({"n": [99]}), parts / "_temporary" / "c.parquet")
    pq.write_table(pa.table({"n": [98]}), parts / ".hidden.parquet")
    (parts / "_SUCCESS").write_bytes(b"")  # Spark's empty marker: list the directory
    assert [r["n"] for r in iter_rows(str(parts))] == [1, 2, 3]
    assert [r["n"] for r in iter_rows(str(parts / "b*.parquet"))] == [3]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no data files"):
        list(iter_rows(str(tmp_path / "empty")))


# ----------------------------------------------------------------------------- published outputs
PART = "part-{:020d}-abcdef01-{}.parquet"


def publish_by_hand(target: Path, publish: int, shards: dict[str, list[int]]) -> None:
    """Parts and a marker as ``curator_flows.publish`` writes them (the marker last)."""
    target.mkdir(exist_ok=True)
    files = []
    for shard, values in shards.items():
        name = PART.format(publish, shard)
        pq.write_table(pa.table({"n": values}), target / name)
        files.append({"path": name, "rows": len(values), "bytes": 0})
    marker = {"format": "parquet", "version": 1, "files": files, "rows": 0, "statistics": {}}
    (target / "_SUCCESS").write_text(json.dumps(marker))


def test_a_published_output_reads_exactly_the_files_its_marker_lists(tmp_path):
    out = tmp_path / "out"
    publish_by_hand(out, 1, {"00000": [1, 2], "00001": [3]})
    # a newer publish in progress: its parts are there, its marker is not yet
    pq.write_table(pa.table({"n": [100]}), out / PART.format(2, "00000"))
    assert [r["n"] for r in iter_rows(str(out))] == [1, 2, 3]
    publish_by_hand(out, 2, {"00000": [100]})  # the marker switches readers at once
    assert [r["n"] for r in iter_rows(str(out))] == [100]


def test_parts_without_a_marker_are_not_an_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"n": [1]}), out / PART.format(1, "00000"))
    with pytest.raises(InputError, match="nothing is published") as error:
        list(iter_rows(str(out)))
    assert error.value.retryable


def test_an_output_replaced_while_read_never_mixes_two_publishes(tmp_path):
    out = tmp_path / "out"
    publish_by_hand(out, 1, {"00000": [1, 2], "00001": [3]})
    rows = iter_rows(str(out))
    assert next(rows) == {"n": 1}
    publish_by_hand(out, 2, {"00000": [10], "00001": [20]})
    for name in (PART.format(1, "00000"), PART.format(1, "00001")):
        os.remove(out / name)  # the publisher removes the superseded parts
    with pytest.raises(InputError, match="replaced by a newer publish") as error:
        list(rows)
    assert error.value.retryable
    # replaced before the first row was read: the new marker is read instead
    rows = iter_rows(str(out))
    publish_by_hand(out, 3, {"00000": [7]})
    os.remove(out / PART.format(2, "00000"))
    os.remove(out / PART.format(2, "00001"))
    assert [r["n"] for r in rows] == [7]


def test_a_real_publish_is_read_back(sim, params, wd, tmp_path):
    pytest.importorskip("curator_flows.publish")
    first = Topics("gpt-4o-mini", backend_params=params())
    run = steps.prepare(first, ["alpha", "beta", "gamma"], wd, rebuild_check=False)
    steps.run_online(run, llm=first)
    out = str(tmp_path / "published")
    steps.finalize(run, llm=first, output_uri=out)
    assert [r["subject"] for r in iter_rows(out)] == ["alpha", "beta", "gamma"]


# ----------------------------------------------------------------------------- object stores
def test_parquet_and_jsonl_on_s3(s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem()
    table = arrow_table(CHUNK_ROWS + 10)
    with fs.open(f"{s3_bucket}/in/rows.parquet", "wb") as handle:
        pq.write_table(table, handle, row_group_size=500)
    fs.pipe(f"{s3_bucket}/in/rows.jsonl", b'{"n": 1}\n"just a prompt"\n')
    assert list(iter_rows(f"{s3_bucket}/in/rows.parquet")) == table.to_pylist()
    assert list(iter_rows(f"{s3_bucket}/in/rows.jsonl")) == [{"n": 1}, "just a prompt"]
    assert len(list(iter_rows(f"{s3_bucket}/in"))) == CHUNK_ROWS + 12  # the directory


def test_s3_storage_options_come_from_credentials(s3_bucket, s3_endpoint, monkeypatch, sim, wd):
    import fsspec
    import s3fs

    s3fs.S3FileSystem(endpoint_url=s3_endpoint).pipe(
        f"{s3_bucket}/rows.jsonl", b'{"n": 1}\n{"n": 2}\n'
    )
    monkeypatch.delitem(fsspec.config.conf, "s3")  # no process-wide S3 configuration
    s3fs.S3FileSystem.clear_instance_cache()
    credentials = Credentials(
        api_key="test-key-not-a-secret",
        base_url=sim.base_url,
        storage_options={"endpoint_url": s3_endpoint},
    )
    llm = Numbered("gpt-4o-mini", backend_params={"progress": "off"})
    run = steps.prepare(
        llm, f"{s3_bucket}/rows.jsonl", wd, credentials=credentials, rebuild_check=False
    )
    assert run["rows"] == 2
    steps.run_online(run, llm=llm, credentials=credentials)
    steps.finalize(run, llm=llm, credentials=credentials)
    assert sorted(sim.stats()["by_prompt"]) == ["number 1", "number 2"]


# ----------------------------------------------------------------------------- Curator's shapes
SEEN: list = []


class Topics(LLM):
    """Curator's README style: the input is the string itself."""

    def prompt(self, subject):
        SEEN.append(("prompt", subject))
        return f"Topics about {subject}"

    def parse(self, subject, response):
        SEEN.append(("parse", subject))
        return {"subject": subject, "text": response}


class Poet(LLM):
    def prompt(self, row):
        return f"A poem on {row['subject']}"

    def parse(self, row, response):
        return {"subject": row["subject"], "poem": response}


class Numbered(LLM):
    def prompt(self, row):
        return f"number {row['n']}"

    def parse(self, row, response):
        return {"n": row["n"], "response": response}


def test_a_single_string_reaches_prompt_and_parse_as_itself(sim, params, wd):
    SEEN.clear()
    result = Topics("gpt-4o-mini", backend_params=params())("Mathematics", working_dir=wd)
    assert SEEN == [("prompt", "Mathematics"), ("parse", "Mathematics")]
    assert result.dataset.to_list()[0]["subject"] == "Mathematics"
    assert sim.stats()["by_prompt"] == {"Topics about Mathematics": 1}
    plain = LLM("gpt-4o-mini", backend_params=params())("Mathematics", working_dir=wd)
    assert plain.dataset.column_names == ["response"]
    assert sim.stats()["by_prompt"]["Mathematics"] == 1


def test_a_list_of_strings_is_one_row_per_string(sim, params, wd):
    SEEN.clear()
    Topics("gpt-4o-mini", backend_params=params())(["art", "music"], working_dir=wd)
    assert ("prompt", "art") in SEEN and ("parse", "music") in SEEN
    LLM("gpt-4o-mini", backend_params=params())([{"prompt": "old style"}], working_dir=wd)
    assert set(sim.stats()["by_prompt"]) == {"Topics about art", "Topics about music", "old style"}


def test_a_list_of_messages_is_one_conversation(sim, params, wd):
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
    ]
    result = LLM("gpt-4o-mini", backend_params=params())(conversation, working_dir=wd)
    assert len(result.dataset) == 1
    assert sim.stats()["by_prompt"] == {"Name a colour.": 1}
    request = next(
        json.loads(line)
        for line in Path(result.cache_dir, "requests", "00000.jsonl").read_text().splitlines()
    )
    assert request["messages"] == conversation and request["input"] == conversation


def test_chaining_stages_through_responses_uris_and_step_results(sim, params, wd):
    topics = Topics("gpt-4o-mini", backend_params=params())
    first = topics(["alpha", "beta"], working_dir=wd)
    follow_up = Numbered("gpt-4o-mini", backend_params=params())
    poet = Poet("gpt-4o-mini", backend_params=params())
    poems = poet(first, working_dir=wd)  # Curator: poet(topic_generator())
    assert poems.dataset["subject"] == ["alpha", "beta"]
    assert poet(first.cache_dir, working_dir=wd).dataset["subject"] == ["alpha", "beta"]
    run = steps.prepare(poet, steps.finalize(first.cache_dir, llm=topics), wd, rebuild_check=False)
    assert run["rows"] == 2
    assert sim.stats()["by_prompt"]["A poem on alpha"] == 1  # the same run each time
    unfinished = steps.prepare(follow_up, [{"n": 1}], wd, rebuild_check=False)
    with pytest.raises(InputError, match="not finalized yet"):
        poet(unfinished["run_uri"], working_dir=wd)
    with pytest.raises(InputError, match="not finalized yet"):
        poet(unfinished, working_dir=wd)
