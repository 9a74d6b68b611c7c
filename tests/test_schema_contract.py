"""The schema contract of a published asset: night after night the published columns keep their
types; a value that does not fit leaves its row out (listed, counted); a column added, removed
or retyped in the code is refused with a diff unless ``schema_evolution`` allows it; two
publishes settling a contract at once write one (local disk and S3 through moto)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curator_flows import steps
from curator_flows.errors import SchemaChangeError, TooManyFailuresError
from curator_flows.publish import published_files, read_marker
from curator_flows.store import RunStore

sys.path.insert(0, str(Path(__file__).parent / "support"))

from publish_llms import AnnotatedRows, DeclaredRows, EchoRows  # noqa: E402


def night(llm, rows, working_dir, root, date, credentials=None, **publish):
    """One nightly build: prepare (the date is the run key), send, publish ``date=<date>``
    (publishing what the contract admits: these tests look at the rows it leaves out, not at the
    ``max_failed_fraction`` gate, which ``tests/test_publish_gate.py`` covers)."""
    publish.setdefault("max_failed_fraction", 1.0)
    run = steps.prepare(llm, rows, working_dir, run_key=date, credentials=credentials)
    steps.run_online(run, llm=llm, credentials=credentials)
    return steps.finalize(
        run,
        llm=llm,
        output_uri=root,
        partition={"date": date},
        credentials=credentials,
        **publish,
    )


def published_table(partition_uri: str, options: dict | None = None) -> pa.Table:
    tables = []
    for uri in published_files(partition_uri, options or {}):
        with fsspec.open(uri, "rb", **(options or {})) as handle:
            tables.append(pq.read_table(handle))
    return pa.concat_tables(tables)


def invalid_lines(result) -> list[dict]:
    if result["invalid_rows_uri"] is None:
        return []
    with fsspec.open(result["invalid_rows_uri"], "rb") as handle:
        return [orjson.loads(line) for line in handle]


def test_a_value_past_int64_leaves_its_row_out_and_the_column_stays_int64(sim, params, tmp_path):
    llm = EchoRows("gpt-4o-mini", backend_params=params())
    wd, root = str(tmp_path / "wd"), str(tmp_path / "recipes")
    first = night(llm, [{"n": i, "count": i} for i in range(3)], wd, root, "2026-12-03")
    assert first["schema"]["columns"] == {"n": "int64", "count": "int64"}
    assert first["invalid_rows"] == 0 and first["published_rows"] == 3

    rows = [{"n": 10, "count": 7}, {"n": 11, "count": 2**70}, {"n": 12, "count": 9}]
    second = night(llm, rows, wd, root, "2026-12-04")
    table = published_table(second["output_uri"])
    assert table.schema.field("count").type == pa.int64()  # not decimal128(22, 0)
    assert table.to_pylist() == [{"n": 10, "count": 7}, {"n": 12, "count": 9}]
    assert second["rows"] == 3 and second["published_rows"] == 2
    assert second["invalid_rows"] == 1 and second["invalid_requests"] == 1
    assert second["schema"]["generation"] == 1
    [line] = invalid_lines(second)
    assert line["row"] == 1 and line["shard"] == "00000" and line["output_row"] == 1
    [problem] = line["errors"]
    assert problem["column"] == "count" and problem["contract_type"] == "int64"
    assert problem["output_type"] == "decimal128(22, 0)"
    assert "out of bounds" in problem["reason"] and str(2**70) in problem["value"]
    marker = read_marker(second["output_uri"])
    assert marker["invalid_rows"] == 1 and marker["columns"]["count"] == "int64"
    assert marker["schema"]["fingerprint"] == first["schema"]["fingerprint"]
    assert RunStore(root).glob("_schema/*.json") == ["_schema/00000001.json"]


def test_rows_the_contract_leaves_out_count_against_max_failed_fraction(sim, params, tmp_path):
    llm = EchoRows("gpt-4o-mini", backend_params=params())
    wd, root = str(tmp_path / "wd"), str(tmp_path / "recipes")
    night(llm, [{"n": i, "count": i} for i in range(3)], wd, root, "2026-12-03")
    rows = [{"n": 10 + i, "count": 2**70 if i == 1 else i} for i in range(4)]
    with pytest.raises(TooManyFailuresError, match="schema_contract: 1") as err:
        night(llm, rows, wd, root, "2026-12-04", max_failed_fraction=0.2)
    assert not err.value.retryable  # the same data fails the same way
    assert not RunStore(root).exists("date=2026-12-04/_SUCCESS")  # nothing published
    published = night(llm, rows, wd, root, "2026-12-04", max_failed_fraction=0.25)
    assert published["published_rows"] == 3 and published["invalid_requests"] == 1


def test_strings_are_cast_to_the_declared_int_and_what_does_not_cast_is_listed(
    sim, params, tmp_path
):
    llm = DeclaredRows("gpt-4o-mini", backend_params=params())
    wd, root = str(tmp_path / "wd"), str(tmp_path / "counts")
    rows = [{"n": 1, "count": "12"}, {"n": 2, "count": "twelve"}, {"n": 3, "count": 1.5},
            {"n": 4, "count": 4.0}, {"n": 5, "count": None}]  # fmt: skip
    result = night(llm, rows, wd, root, "2026-12-04")
    assert result["schema"]["columns"] == {"n": "int64", "count": "int64"}
    contract = RunStore(root).read_json("_schema/00000001.json")
    assert contract["source"].startswith("declared by output_schema")
    assert [f["nullable"] for f in contract["fields"]] == [False, False]  # required fields
    assert published_table(result["output_uri"]).to_pylist() == [
        {"n": 1, "count": 12},
        {"n": 4, "count": 4},
    ]
    reasons = {line["row"]: line["errors"][0] for line in invalid_lines(result)}
    assert sorted(reasons) == [1, 2, 4]
    assert reasons[1]["value_type"] == "str" and "twelve" in reasons[1]["reason"]
    assert reasons[2]["value_type"] == "float" and "truncated" in reasons[2]["reason"]
    assert "non-nullable" in reasons[4]["reason"]


def test_parse_annotated_to_return_a_model_declares_the_contract(sim, params, tmp_path):
    llm = AnnotatedRows("gpt-4o-mini", backend_params=params())
    result = night(llm, [{"n": i} for i in range(3)], str(tmp_path / "wd"), str(tmp_path / "c"),
                   "2026-12-04")  # fmt: skip
    contract = RunStore(str(tmp_path / "c")).read_json("_schema/00000001.json")
    assert contract["source"].startswith("declared by parse() -> ")
    assert contract["source"].endswith("publish_llms.Counted")
    assert result["schema"]["columns"] == {"n": "int64", "count": "int64"}


def test_a_column_added_or_removed_in_the_code_is_refused_with_a_diff_unless_allowed(
    sim, params, tmp_path
):
    llm = EchoRows("gpt-4o-mini", backend_params=params())
    wd, root = str(tmp_path / "wd"), str(tmp_path / "recipes")
    night(llm, [{"n": 1, "count": 1}], wd, root, "2026-12-03")

    added = [{"n": 2, "count": 2, "rating": 5}]
    with pytest.raises(SchemaChangeError) as refused:
        night(llm, added, wd, root, "2026-12-04")
    assert "+ column 'rating' (int64) is new" in str(refused.value)
    assert 'schema_evolution="add_columns"' in str(refused.value)
    assert refused.value.changes == ["+ column 'rating' (int64) is new"]
    assert not refused.value.retryable
    assert read_marker(f"{root}/date=2026-12-04") is None  # nothing published

    result = night(llm, added, wd, root, "2026-12-04", schema_evolution="add_columns")
    assert result["schema"]["generation"] == 2
    assert result["schema"]["columns"] == {"n": "int64", "count": "int64", "rating": "int64"}
    assert read_marker(f"{root}/date=2026-12-03")["schema"]["generation"] == 1  # untouched

    removed = [{"n": 3, "rating": 4}]
    with pytest.raises(SchemaChangeError, match=r"- column 'count' \(int64\) is gone"):
        night(llm, removed, wd, root, "2026-12-05", schema_evolution="add_columns")
    result = night(llm, removed, wd, root, "2026-12-05", schema_evolution="replace")
    assert result["schema"]["generation"] == 3
    assert result["schema"]["columns"] == {"n": "int64", "rating": "int64"}


def test_a_declared_retype_is_refused_and_replace_writes_a_new_generation(sim, params, tmp_path):
    wd, root = str(tmp_path / "wd"), str(tmp_path / "typed")
    as_int = pa.schema([("n", pa.int64()), ("count", pa.int64())])
    as_text = pa.schema([("n", pa.int64()), ("count", pa.string())])
    night(EchoRows("gpt-4o-mini", backend_params=params(), output_schema=as_int),
          [{"n": 1, "count": 1}], wd, root, "2026-12-03")  # fmt: skip
    retyped = EchoRows("gpt-4o-mini", backend_params=params(), output_schema=as_text)
    with pytest.raises(SchemaChangeError, match="~ column 'count' was int64, is now string"):
        night(retyped, [{"n": 2, "count": 2}], wd, root, "2026-12-04")
    result = night(retyped, [{"n": 2, "count": 2}], wd, root, "2026-12-04",
                   schema_evolution="replace")  # fmt: skip
    assert result["schema"]["generation"] == 2
    assert published_table(result["output_uri"]).to_pylist() == [{"n": 2, "count": "2"}]


def test_a_column_of_unknown_type_is_settled_by_the_first_night_with_values(sim, params, tmp_path):
    llm = EchoRows("gpt-4o-mini", backend_params=params())
    wd, root = str(tmp_path / "wd"), str(tmp_path / "notes")
    first = night(llm, [{"n": 1, "note": None}], wd, root, "2026-12-03")
    assert first["schema"]["columns"] == {"n": "int64", "note": "null"}
    second = night(llm, [{"n": 2, "note": "salty"}], wd, root, "2026-12-04")
    assert second["schema"]["columns"] == {"n": "int64", "note": "string"}
    assert second["schema"]["generation"] == 2 and second["invalid_rows"] == 0


def test_json_text_reads_the_same_whichever_night_wrote_it(sim, params, tmp_path):
    llm = EchoRows("gpt-4o-mini", backend_params=params())
    wd, root = str(tmp_path / "wd"), str(tmp_path / "mixed")
    first = night(llm, [{"n": 1, "v": "a"}, {"n": 2, "v": 3}], wd, root, "2026-12-03")
    assert published_table(first["output_uri"]).column("v").to_pylist() == ['"a"', "3"]
    second = night(llm, [{"n": 3, "v": "b"}], wd, root, "2026-12-04")  # plain strings tonight
    assert published_table(second["output_uri"]).column("v").to_pylist() == ['"b"']
    assert second["schema"]["generation"] == 1


@pytest.fixture(params=["local", "s3"])
def asset(request, tmp_path):
    if request.param == "local":
        return RunStore(str(tmp_path / "asset"))
    bucket = request.getfixturevalue("s3_bucket")
    return RunStore(f"{bucket}/asset", {"endpoint_url": request.getfixturevalue("s3_endpoint")})


def test_two_publishes_settling_a_contract_at_once_write_one(asset, monkeypatch):
    import curator_flows.schema_contract as schema_contract

    publishers = 4
    proposals = [
        pa.schema([("n", pa.int64())] + ([("extra", pa.string())] if i % 2 else []))
        for i in range(publishers)
    ]
    read = schema_contract.read_contract
    barrier = threading.Barrier(publishers, timeout=30)

    def read_then_wait(store):  # every publisher sees no contract before any creates one
        found = read(store)
        if found is None:
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass
        return found

    monkeypatch.setattr(schema_contract, "read_contract", read_then_wait)
    outcomes: list = [None] * publishers

    def settle(index: int) -> None:
        try:
            contract, _ = schema_contract.settle(
                asset, proposals[index], declared=False, source="inferred",
                evolution="strict", run_id=f"run-{index}",
            )  # fmt: skip
            outcomes[index] = contract
        except SchemaChangeError as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=settle, args=(i,)) for i in range(publishers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert asset.glob("_schema/*.json") == ["_schema/00000001.json"]
    written = schema_contract.Contract.from_json(asset.read_json("_schema/00000001.json"))
    contracts = [o for o in outcomes if isinstance(o, schema_contract.Contract)]
    refused = [o for o in outcomes if isinstance(o, SchemaChangeError)]
    assert len(contracts) + len(refused) == publishers
    assert {c.fingerprint for c in contracts} == {written.fingerprint}
    # the publishers whose schema differs from the one written are refused, never re-contracted
    assert len(refused) == sum(p != written.schema for p in proposals)


def test_a_publish_gate_refusing_the_invalid_rows_publishes_nothing(sim, params, tmp_path):
    from curator_flows.errors import IncompleteRunError
    from curator_flows.finalize import finalize_run
    from curator_flows.publish import publish
    from curator_flows.runs import open_run

    llm = EchoRows("gpt-4o-mini", backend_params=params())
    wd, root = str(tmp_path / "wd"), str(tmp_path / "gated")
    night(llm, [{"n": 1, "count": 1}], wd, root, "2026-12-03")
    run = steps.prepare(llm, [{"n": 2, "count": 2**70}, {"n": 3, "count": 3}], wd,
                        run_key="2026-12-04")  # fmt: skip
    steps.run_online(run, llm=llm)
    store, manifest = open_run(run["run_uri"])
    output = finalize_run(store, manifest, llm)
    seen = []

    def gate(invalid_requests: int) -> None:
        seen.append(invalid_requests)
        raise IncompleteRunError("too many rows left out", failed=invalid_requests, total=2)

    with pytest.raises(IncompleteRunError):
        publish(store, manifest, output, root, partition={"date": "2026-12-04"}, admit=gate)
    assert seen == [1]
    partition = RunStore(f"{root}/date=2026-12-04")
    assert read_marker(partition.uri) is None
    assert partition.glob("*part*") == []  # staged parts removed
    assert store.exists("invalid_rows.jsonl")  # the list of what was left out stays


def test_a_contract_file_seen_before_its_bytes_is_read_once_whole(tmp_path):
    """Created exclusively on local disk, a generation file exists (empty) for an instant
    before its bytes: a publish reading it then waits for them instead of failing."""
    import curator_flows.schema_contract as schema_contract

    asset = RunStore(str(tmp_path / "asset"))
    contract = schema_contract.Contract(pa.schema([("n", pa.int64())]), 1, "inferred", 0.0, "r")
    asset.write_bytes("_schema/00000001.json", b"")
    writer = threading.Timer(
        0.3, lambda: asset.write_json("_schema/00000001.json", contract.to_json())
    )
    writer.start()
    try:
        assert schema_contract.read_contract(asset).fingerprint == contract.fingerprint
    finally:
        writer.join()


class Nothing(EchoRows):
    """``parse()`` keeps no row."""

    def parse(self, input: dict, response: str) -> list:
        return []


def test_a_night_without_rows_neither_records_nor_breaks_the_contract(sim, params, tmp_path):
    wd, root = str(tmp_path / "wd"), str(tmp_path / "sparse")
    empty = night(Nothing("gpt-4o-mini", backend_params=params()), [{"n": 1}], wd, root,
                  "2026-12-02")  # fmt: skip
    assert empty["published_rows"] == 0 and empty["schema"]["generation"] == 0
    assert RunStore(root).glob("_schema/*.json") == []  # nothing to infer a contract from
    llm = EchoRows("gpt-4o-mini", backend_params=params())
    first = night(llm, [{"n": 1, "count": 1}], wd, root, "2026-12-03")
    assert first["schema"]["generation"] == 1
    again = night(Nothing("gpt-4o-mini", backend_params=params()), [{"n": 2}], wd, root,
                  "2026-12-04")  # fmt: skip
    assert again["schema"]["columns"] == {"n": "int64", "count": "int64"}  # the contract's
    assert published_table(again["output_uri"]).num_rows == 0
