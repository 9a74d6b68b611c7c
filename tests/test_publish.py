"""finalize(run, output_uri=...): Parquet parts, then the ``_SUCCESS`` marker; readers see the
old complete output or the new one, never a mix, also after a kill during publish (local disk
and S3 through moto's server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from curator_flows import Credentials, steps
from curator_flows.publish import MARKER, published_files, read_marker

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from publish_llms import EchoRows, Versioned  # noqa: E402


def read_published(output_uri: str, storage_options: dict) -> list[dict]:
    """What a downstream reader sees: exactly the files ``_SUCCESS`` lists."""
    rows = []
    for uri in published_files(output_uri, storage_options):
        with fsspec.open(uri, "rb", **storage_options) as handle:
            rows.extend(pq.read_table(handle).to_pylist())
    return rows


def listing(output_uri: str, storage_options: dict) -> list[str]:
    fs, root = fsspec.core.url_to_fs(output_uri, **storage_options)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))


@pytest.fixture(params=["local", "s3"])
def target(request, tmp_path):
    """``(working_dir, output_uri, storage_options)`` on local disk or on S3 (moto)."""
    if request.param == "local":
        return str(tmp_path / "wd"), str(tmp_path / "published" / "date=2024-05-01"), {}
    bucket = request.getfixturevalue("s3_bucket")
    options = {"endpoint_url": request.getfixturevalue("s3_endpoint")}
    return f"{bucket}/runs", f"{bucket}/published/date=2024-05-01", options


def test_publish_writes_parts_then_a_marker_with_rows_and_statistics(sim, params, target):
    working_dir, output_uri, options = target
    credentials = Credentials(storage_options=options)
    llm = Versioned("gpt-4o-mini", backend_params=params(shard_size=4))
    run = steps.prepare(llm, [{"n": i} for i in range(10)], working_dir, credentials=credentials)
    steps.run_online(run, llm=llm, credentials=credentials)
    result = steps.finalize(run, llm=llm, output_uri=output_uri, credentials=credentials)
    assert result["output_uri"] == output_uri.rstrip("/")
    marker = read_marker(output_uri, options)
    assert marker["rows"] == 10 and marker["run_id"] == run["run_id"]
    assert [entry["rows"] for entry in marker["files"]] == [4, 4, 2]
    assert marker["columns"] == {"n": "int64", "version": "int64"}
    assert marker["statistics"]["request_stats"]["succeeded"] == 10
    assert read_published(output_uri, options) == [{"n": i, "version": 1} for i in range(10)]
    assert MARKER in listing(output_uri, options)

    names = listing(output_uri, options)
    again = steps.finalize(run, llm=llm, output_uri=output_uri, credentials=credentials)
    assert again["rows"] == 10 and read_marker(output_uri, options) == marker  # rewrote nothing
    assert listing(output_uri, options) == names


def test_a_kill_during_publish_leaves_the_old_output_and_the_next_publish_completes(
    sim, params, target
):
    working_dir, output_uri, options = target
    credentials = Credentials(storage_options=options)
    llm = Versioned("gpt-4o-mini", backend_params=params(shard_size=4))
    run = steps.prepare(llm, [{"n": i} for i in range(10)], working_dir, credentials=credentials)
    steps.run_online(run, llm=llm, credentials=credentials)
    steps.finalize(run, llm=llm, output_uri=output_uri, credentials=credentials)
    old_marker = read_marker(output_uri, options)

    child = subprocess.Popen(
        [
            sys.executable,
            str(SUPPORT / "publish_llms.py"),
            run["run_uri"],
            output_uri,
            json.dumps(options),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SUPPORT)},
    )
    try:
        line = child.stdout.readline()  # the first new part is complete
        assert json.loads(line)["written"], line
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)

    assert len(listing(output_uri, options)) > len(old_marker["files"]) + 1  # a stray part
    assert read_marker(output_uri, options) == old_marker  # readers still see the old output
    assert read_published(output_uri, options) == [{"n": i, "version": 1} for i in range(10)]
    if not options:  # a listing reader (a glob of *.parquet) sees the old output alone too
        rows = duckdb.sql(f"SELECT n, version FROM read_parquet('{output_uri}/*.parquet')")
        assert sorted(rows.fetchall()) == [(i, 1) for i in range(10)]

    newer = Versioned("gpt-4o-mini", version=3, backend_params=params(shard_size=4))
    steps.finalize(run, llm=newer, output_uri=output_uri, credentials=credentials)
    marker = read_marker(output_uri, options)
    assert marker["publish_id"] != old_marker["publish_id"] and marker["rows"] == 10
    assert read_published(output_uri, options) == [{"n": i, "version": 3} for i in range(10)]
    names = listing(output_uri, options)
    assert not {entry["path"] for entry in old_marker["files"]} & set(names)  # old parts gone
    assert {entry["path"] for entry in marker["files"]} <= set(names)


def test_stray_parts_of_a_crashed_publish_are_removed_once_old_enough(tmp_path):
    from curator_flows.publish import _remove_superseded
    from curator_flows.store import RunStore

    target = RunStore(str(tmp_path / "out"))
    for name in ("part-00000000000000000001-aaaa-00000.parquet", "part-99999999999999999999-bb-0"):
        target.write_bytes(name if name.endswith(".parquet") else name + ".parquet", b"x")
    keep = {"files": [{"path": "part-00000000000000000002-cc-00000.parquet"}]}
    target.write_bytes(keep["files"][0]["path"], b"x")
    _remove_superseded(target, None, keep, cutoff=1.0)
    assert target.glob("part-*") == [
        "part-00000000000000000002-cc-00000.parquet",
        "part-99999999999999999999-bb-0.parquet",  # younger than the cutoff: maybe still running
    ]


def test_an_incomplete_run_is_not_published(sim, params, tmp_path):
    llm = Versioned("gpt-4o-mini", backend_params=params(shard_size=4))
    run = steps.prepare(llm, [{"n": i} for i in range(8)], str(tmp_path / "wd"))
    steps.run_online(run, "00000", llm=llm)
    output_uri = str(tmp_path / "out")
    with pytest.raises(Exception, match="00001"):
        steps.finalize(run, llm=llm, output_uri=output_uri)
    assert read_marker(output_uri) is None


def nightly(llm, rows, working_dir, root, date, credentials=None):
    run = steps.prepare(llm, rows, working_dir, run_key=date, credentials=credentials)
    steps.run_online(run, llm=llm, credentials=credentials)
    return steps.finalize(
        run, llm=llm, output_uri=root, partition={"date": date}, credentials=credentials
    )


#: what a listing reader skips besides Hive's hidden files: the dataset card
LISTING_IGNORES = [".", "_", "README.md"]


def test_three_nights_read_as_one_table_through_pyarrow_duckdb_and_datasets(sim, params, tmp_path):
    import datasets

    llm = EchoRows("gpt-4o-mini", backend_params=params(shard_size=2))
    wd, root = str(tmp_path / "wd"), str(tmp_path / "recipes")
    nights = {"2026-12-02": 3, "2026-12-03": 5, "2026-12-04": 4}
    results = {}
    for date, count in nights.items():
        rows = [{"n": i, "title": f"{date} #{i}"} for i in range(count)]
        results[date] = nightly(llm, rows, wd, root, date)
    assert results["2026-12-04"]["output_uri"] == f"{root}/date=2026-12-04"
    assert results["2026-12-04"]["asset_uri"] == root
    assert results["2026-12-04"]["partition"] == {"date": "2026-12-04"}
    assert sorted(os.listdir(root)) == [
        "README.md", "_schema", "date=2026-12-02", "date=2026-12-03", "date=2026-12-04",
    ]  # fmt: skip

    dataset = ds.dataset(
        root, format="parquet", partitioning="hive", ignore_prefixes=LISTING_IGNORES
    )
    table = dataset.to_table()
    assert table.num_rows == sum(nights.values())
    per_night = table.group_by("date").aggregate([("n", "count")]).to_pylist()
    assert {row["date"]: row["n_count"] for row in per_night} == nights
    titles, dates = table.column("title").to_pylist(), table.column("date").to_pylist()
    assert all(title.startswith(date) for title, date in zip(titles, dates, strict=True))

    counted = duckdb.sql(
        f"SELECT date, count(*) FROM read_parquet('{root}/*/*.parquet', hive_partitioning=true) "
        "GROUP BY date ORDER BY date"
    ).fetchall()
    assert [(str(date), n) for date, n in counted] == list(nights.items())

    loaded = datasets.load_dataset(
        "parquet", data_files=f"{root}/date=*/part-*.parquet", split="train"
    )
    assert loaded.num_rows == sum(nights.values())


def test_a_night_published_again_replaces_its_partition_alone(sim, params, target):
    _, base, options = target
    working_dir, root = target[0], base.rsplit("/", 1)[0] + "/recipes"
    credentials = Credentials(storage_options=options)
    llm = EchoRows("gpt-4o-mini", backend_params=params(shard_size=2))
    nights = ["2026-12-02", "2026-12-03", "2026-12-04"]
    for date in nights:
        nightly(llm, [{"n": i, "night": date} for i in range(3)], working_dir, root, date,
                credentials)  # fmt: skip
    fs, path = fsspec.core.url_to_fs(root, **options)
    before = {p: fs.info(p)["size"] for p in fs.find(path) if "/date=" in p}
    markers = {date: read_marker(f"{root}/date={date}", options) for date in nights}

    again = [{"n": i, "night": "2026-12-03 again"} for i in range(4)]
    nightly(llm, again, working_dir, root, "2026-12-03", credentials)
    after = {p: fs.info(p)["size"] for p in fs.find(path) if "/date=" in p}
    for date in ("2026-12-02", "2026-12-04"):  # untouched
        assert read_marker(f"{root}/date={date}", options) == markers[date]
        assert {p: s for p, s in after.items() if date in p} == {
            p: s for p, s in before.items() if date in p
        }
    replaced = read_marker(f"{root}/date=2026-12-03", options)
    assert replaced["publish_id"] != markers["2026-12-03"]["publish_id"] and replaced["rows"] == 4
    parts = sorted(p.rsplit("/", 1)[-1] for p in after if "2026-12-03" in p)
    assert parts == sorted(["_SUCCESS", "_report.html", *(e["path"] for e in replaced["files"])])

    table = ds.dataset(
        path, filesystem=fs, format="parquet", partitioning="hive", ignore_prefixes=LISTING_IGNORES
    ).to_table()
    nights_read = table.group_by("date").aggregate([("n", "count")]).to_pylist()
    assert {row["date"]: row["n_count"] for row in nights_read} == {
        "2026-12-02": 3, "2026-12-03": 4, "2026-12-04": 3,
    }  # fmt: skip
    assert pa.compute.unique(table.filter(pa.compute.equal(table["date"], "2026-12-03"))["night"]
                             ).to_pylist() == ["2026-12-03 again"]  # fmt: skip


def test_partition_keys_and_values_are_checked(sim, params, tmp_path):
    from curator_flows.errors import ConfigError

    llm = EchoRows("gpt-4o-mini", backend_params=params())
    run = steps.prepare(llm, [{"n": 1}], str(tmp_path / "wd"))
    steps.run_online(run, llm=llm)
    root = str(tmp_path / "out")
    with pytest.raises(ConfigError, match="must be letters, digits"):
        steps.finalize(run, llm=llm, output_uri=root, partition={"date": "2026/12/04"})
    with pytest.raises(ConfigError, match="also columns of the dataset"):
        steps.finalize(run, llm=llm, output_uri=root, partition={"n": "1"})
    assert not os.path.exists(root) or not os.listdir(root)


def test_the_asset_of_a_dated_output_uri_is_its_static_prefix():
    from curator_flows.publish import asset_of

    assert asset_of("s3://b/recipes/2026-12-04/") == ("s3://b/recipes", "s3://b/recipes/2026-12-04")
    assert asset_of("s3://b/recipes/date=2026-12-04")[0] == "s3://b/recipes"
    assert asset_of("s3://b/recipes/2026/12/04")[0] == "s3://b/recipes"
    assert asset_of("/data/recipes/20261204T0200")[0] == "/data/recipes"
    assert asset_of("s3://b/recipes/latest")[0] == "s3://b/recipes/latest"
    assert asset_of("s3://b/recipes", {"date": "2026-12-04", "hour": 2}) == (
        "s3://b/recipes", "s3://b/recipes/date=2026-12-04/hour=2",
    )  # fmt: skip
