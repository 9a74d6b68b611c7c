"""The dataset card (``README.md``) written beside published data: its YAML header parses, names
exactly the published files, and matches what ``datasets.load_dataset`` loads from the folder
(features, row count), offline; with partitions one card at the root covers every night."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from curator_flows import steps
from curator_flows.publish import read_marker

sys.path.insert(0, str(Path(__file__).parent / "support"))

from publish_llms import EchoRows  # noqa: E402


@pytest.fixture
def offline_datasets(monkeypatch, tmp_path):
    """``datasets`` offline, caching under the test's directory; returns ``load(folder)``."""
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if hasattr(datasets.config, name):
            monkeypatch.setattr(datasets.config, name, True)
    cache = str(tmp_path / "hf-cache")
    return lambda folder: datasets.load_dataset(folder, split="train", cache_dir=cache)


def card_of(folder: str) -> tuple[dict, str]:
    text = Path(folder, "README.md").read_text()
    assert text.startswith("---\n")
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def rows_with_nested_values(count: int, night: str) -> list[dict]:
    return [
        {"n": i, "title": f"{night} #{i}", "tags": ["a", "b"][: i % 3], "meta": {"score": i / 2}}
        for i in range(count)
    ]


def test_a_published_folder_loads_with_datasets_as_its_card_says(
    sim, params, tmp_path, offline_datasets
):
    import datasets

    llm = EchoRows("gpt-4o-mini", backend_params=params(shard_size=3))
    run = steps.prepare(llm, rows_with_nested_values(7, "n1"), str(tmp_path / "wd"),
                        run_key="2026-12-04")  # fmt: skip
    steps.run_online(run, llm=llm)
    folder = str(tmp_path / "recipes" / "2026-12-04")
    result = steps.finalize(run, llm=llm, output_uri=folder)
    marker = read_marker(folder)

    header, body = card_of(folder)
    [config] = header["configs"]
    [files] = config["data_files"]
    assert files == {"split": "train", "path": [entry["path"] for entry in marker["files"]]}
    assert header["dataset_info"]["splits"] == [{"name": "train", "num_examples": 7}]

    loaded = offline_datasets(folder)
    assert loaded.num_rows == 7 == result["rows"]
    assert datasets.Features._from_yaml_list(header["dataset_info"]["features"]) == loaded.features
    assert loaded.features["meta"] == {"score": datasets.Value("float64")}
    assert loaded[1] == {"n": 1, "title": "n1 #1", "tags": ["a"], "meta": {"score": 0.5}}

    for fact in (
        "gpt-4o-mini",
        "openai / online",
        "| run key | 2026-12-04 |",
        marker["run"]["fingerprints"]["prompts"],
        marker["run"]["fingerprints"]["parse"],
        run["run_id"],
        "| rows | 7 |",
        "| failed requests | 0 |",
        f"| tokens (input / output) | {result['statistics']['token_usage']['input']} / ",
        "| cost (USD) |",
        "| built | 2",
        "| tags | list<item: string> | True |",
        "contract generation 1",
    ):
        assert fact in body, fact

    card = Path(folder, "README.md")
    written = card.stat().st_mtime_ns
    steps.finalize(run, llm=llm, output_uri=folder)  # the same publish again
    assert card.stat().st_mtime_ns == written  # rewrites nothing


def test_partitions_share_one_card_at_the_root_that_loads_every_night(
    sim, params, tmp_path, offline_datasets
):
    llm = EchoRows("gpt-4o-mini", backend_params=params(shard_size=2))
    wd, root = str(tmp_path / "wd"), str(tmp_path / "recipes")
    nights = {"2026-12-02": 3, "2026-12-03": 2, "2026-12-04": 4}

    def publish(date: str, count: int) -> None:
        run = steps.prepare(llm, rows_with_nested_values(count, date), wd, run_key=date)
        steps.run_online(run, llm=llm)
        steps.finalize(run, llm=llm, output_uri=root, partition={"date": date})

    for date, count in nights.items():
        publish(date, count)
    assert not any(name == "README.md" for name in os.listdir(f"{root}/date=2026-12-03"))
    header, body = card_of(root)
    [files] = header["configs"][0]["data_files"]
    assert all(path.startswith("date=") for path in files["path"])
    assert header["dataset_info"]["splits"][0]["num_examples"] == 9
    assert offline_datasets(root).num_rows == 9
    for date, count in nights.items():
        assert f"| {date} | {count} | 0 | 0 |" in body
    assert "3 partition(s) by date" in body

    publish("2026-12-03", 6)  # a night published again: the card follows
    header, body = card_of(root)
    assert header["dataset_info"]["splits"][0]["num_examples"] == 13
    assert "| 2026-12-03 | 6 | 0 | 0 |" in body
    assert offline_datasets(root).num_rows == 13
