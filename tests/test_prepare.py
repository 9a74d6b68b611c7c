"""The prepare step: rows keep their values through prompt() and parse(), errors name the row,
the run id is a pure function of what is sent, request ids stay stable."""

from __future__ import annotations

import datetime
import decimal
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from curator_flows import LLM, InputError, PromptError, steps
from curator_flows.fingerprint import RequestIds, digest

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from input_llms import Stamped  # noqa: E402

PARIS = ZoneInfo("Europe/Paris")
SEEN: list = []


class Recorder(LLM):
    """Records the rows prompt() and parse() receive (in a module list, not on the instance)."""

    def prompt(self, row):
        SEEN.append(("prompt", row))
        return f"event {row['id']}"

    def parse(self, row, response):
        SEEN.append(("parse", row))
        return {"id": row["id"], "response": response}


def rich_rows() -> list[dict]:
    return [
        {
            "id": i,
            "when": datetime.datetime(2026, 3, 29, 1, 30 + i, tzinfo=PARIS),
            "naive": datetime.datetime(2026, 1, 1, 12, i),
            "day": datetime.date(2026, 1, 1 + i),
            "price": decimal.Decimal(f"{i}.10"),
            "key": uuid.UUID(int=i),
            "tags": ("a", i),
            "seen": {i, -i},
            "blob": bytes([i, 255]),
        }
        for i in range(3)
    ]


def test_rows_reach_prompt_and_parse_with_their_values(sim, params, wd):
    SEEN.clear()
    rows = rich_rows()
    Recorder("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    prompted = [row for kind, row in SEEN if kind == "prompt"]
    parsed = [row for kind, row in SEEN if kind == "parse"]
    assert prompted == rows and parsed == rows
    for row in prompted + parsed:
        assert row["when"].tzinfo is PARIS  # kept aware, in its zone
        assert type(row["price"]) is decimal.Decimal and type(row["tags"]) is tuple
        assert type(row["key"]) is uuid.UUID and type(row["day"]) is datetime.date


def test_parse_sees_the_stored_row_in_another_process(sim, wd):
    llm = Stamped("gpt-4o-mini", backend_params={"base_url": sim.base_url, "api_key": "k"})
    rows = [{"n": i, "at": datetime.datetime(2026, 1, 1, i, tzinfo=PARIS)} for i in range(3)]
    run = steps.prepare(llm, rows, wd)
    steps.run_online(run, llm=llm)
    code = (
        "import json; from curator_flows import steps; "
        f"steps.finalize({run['run_uri']!r}); r = steps.load_response({run['run_uri']!r}); "
        "print(json.dumps(r.dataset.to_list()))"
    )
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "OPENAI_API_KEY": "k"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert [r["at_type"] for r in json.loads(out.stdout.splitlines()[-1])] == [
        "datetime Europe/Paris"
    ] * 3


def test_a_dataframe_is_sent_row_by_row(sim, params, wd):
    import pandas as pd

    SEEN.clear()
    frame = pd.DataFrame(
        {"id": range(5), "when": pd.date_range("2026-01-01", periods=5, freq="D", tz="UTC")}
    )
    result = Recorder("gpt-4o-mini", backend_params=params())(frame, working_dir=wd)
    assert result.dataset["id"] == [0, 1, 2, 3, 4]
    assert sorted(sim.stats()["by_prompt"]) == [f"event {i}" for i in range(5)]
    prompted = [row for kind, row in SEEN if kind == "prompt"]
    assert isinstance(prompted[2]["when"], pd.Timestamp)
    assert prompted[2]["when"] == pd.Timestamp("2026-01-03", tz="UTC")


def test_a_value_without_encoding_names_row_and_column_and_sends_nothing(sim, params, wd):
    rows = [{"id": 0}, {"id": 1, "meta": {"handle": object()}}]
    with pytest.raises(InputError, match=r"row 1, column 'meta' at \['handle'\]"):
        Recorder("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert sim.stats()["requests"] == 0


def test_a_lone_surrogate_in_prompt_output_names_the_row_and_message(sim, params, wd):
    class Broken(LLM):
        def prompt(self, row):
            text = "fine" if row["id"] != 2 else "bad \udcff byte"
            return [{"role": "system", "content": "ok"}, {"role": "user", "content": text}]

    rows = [{"id": i} for i in range(4)]
    with pytest.raises(PromptError, match=r"row 2 .*not valid Unicode \(message 1, 'content'\)"):
        Broken("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert sim.stats()["requests"] == 0


def test_a_lone_surrogate_in_a_row_is_kept_and_named_when_sent(sim, params, wd):
    SEEN.clear()
    rows = [{"id": 0, "note": "caf\udce9"}, {"id": 1, "note": "ok"}]
    Recorder("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert [row["note"] for kind, row in SEEN if kind == "parse"] == ["caf\udce9", "ok"]

    class Quoting(LLM):
        def prompt(self, row):
            return f"about {row['note']}"

    with pytest.raises(PromptError, match=r"row 0 returned text that is not valid Unicode"):
        Quoting("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)


def test_request_lines_store_plain_rows_as_themselves(wd):
    llm = LLM("gpt-4o-mini", backend_params={"api_key": "k"})
    run = steps.prepare(llm, [{"prompt": "a", "n": 1}, "b"], wd, rebuild_check=False)
    lines = Path(run["run_uri"], "requests", "00000.jsonl").read_bytes().splitlines()
    inputs = [orjson.loads(line)["input"] for line in lines]
    assert inputs == [{"prompt": "a", "n": 1}, "b"]
    assert lines[0].endswith(b',"input":{"prompt":"a","n":1}}')


def test_the_run_id_is_the_same_in_every_process(wd):
    code = (
        "import json, datetime; from curator_flows import LLM, steps; "
        "llm = LLM('gpt-4o-mini', backend_params={'api_key': 'k'}); "
        "rows = [{'prompt': f'p{i}', 'tags': {f't{j}' for j in range(20)}, "
        "'at': datetime.datetime(2026, 1, 1)} for i in range(5)]; "
        f"print(steps.prepare(llm, rows, {wd!r}, rebuild_check=False)['run_id'])"
    )
    ids = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("0", "1", "2")
    }
    assert len(ids) == 1


def test_request_ids_number_repeats_as_before():
    def reference(family: str, bodies: list[bytes]) -> list[str]:
        seen: dict[str, int] = {}
        ids = []
        for body in bodies:
            base = digest(family, body)
            ordinal = seen.get(base, 0)
            seen[base] = ordinal + 1
            ids.append(base if ordinal == 0 else digest(base, str(ordinal)))
        return ids

    bodies = [str(i % 700).encode() for i in range(20_000)]  # many repeats, table growth
    ids = RequestIds("family")
    assert [ids.next_id(body) for body in bodies] == reference("family", bodies)


def test_editing_one_row_reuses_every_other_response_even_repeated_ones(sim, params, wd):
    rows = [{"id": i % 7} for i in range(20)]  # repeated prompts: each is sent once per repeat
    Recorder("gpt-4o-mini", backend_params=params(shard_size=6))(rows, working_dir=wd)
    assert sim.stats()["requests"] == 20
    rows[13] = {"id": 100}
    result = Recorder("gpt-4o-mini", backend_params=params(shard_size=6))(rows, working_dir=wd)
    assert sim.stats()["requests"] == 21
    assert result.request_stats.cached == 19
    assert result.dataset["id"] == [row["id"] for row in rows]


# ------------------------------------------------------------- system prompt, row params


class Plain(LLM):
    def prompt(self, row):
        return f"about {row['topic']}"


def _lines(run: dict) -> list[dict]:
    from curator_flows.store import RunStore

    store = RunStore(run["run_uri"])
    return [line for shard in run["shards"] for line in store.iter_lines(f"requests/{shard}.jsonl")]


def test_system_prompt_is_the_first_message_and_joins_the_request_ids(wd):
    rows = [{"topic": "a"}, {"topic": "b"}]
    plain = steps.prepare(Plain("gpt-4o-mini"), rows, wd, rebuild_check=False)
    with_system = steps.prepare(
        Plain("gpt-4o-mini", system_prompt="Be brief."), rows, wd, rebuild_check=False
    )
    assert plain["run_id"] != with_system["run_id"]
    first = _lines(with_system)[0]
    assert first["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "about a"},
    ]
    assert {line["id"] for line in _lines(plain)}.isdisjoint(
        line["id"] for line in _lines(with_system)
    )


def test_row_params_are_carried_and_change_only_that_rows_id(wd):
    rows = [
        {"topic": "a", "generation_params": {"temperature": 0.1}},
        {"topic": "b", "generation_params": json.dumps({"temperature": 0.9, "seed": 3})},
        {"topic": "c", "generation_params": None},
        {"topic": "d"},
    ]
    run = steps.prepare(Plain("gpt-4o-mini"), rows, wd, rebuild_check=False)
    lines = _lines(run)
    assert [line.get("params") for line in lines] == [
        {"temperature": 0.1},
        {"seed": 3, "temperature": 0.9},
        None,
        None,
    ]
    changed = [dict(row) for row in rows]
    changed[0]["generation_params"] = {"temperature": 0.2}
    other = _lines(steps.prepare(Plain("gpt-4o-mini"), changed, wd, rebuild_check=False))
    assert [a["id"] == b["id"] for a, b in zip(lines, other, strict=True)] == [
        False,
        True,
        True,
        True,
    ]
    bare = _lines(steps.prepare(Plain("gpt-4o-mini"), [{"topic": "a"}], wd, rebuild_check=False))
    assert bare[0]["id"] != lines[0]["id"]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("{not json", "row 1, column 'generation_params': not a JSON object"),
        (["temperature"], "row 1, column 'generation_params': expected a dict"),
        ({"temprature": 0.5}, "row 1, column 'generation_params': .*did you mean 'temperature'"),
        ({"stream": True}, "row 1, column 'generation_params': .*stream"),
    ],
)
def test_bad_row_params_name_the_row_and_send_nothing(sim, params, wd, value, match):
    rows = [{"topic": "ok"}, {"topic": "bad", "generation_params": value}]
    with pytest.raises(InputError, match=match):
        Plain("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert sim.stats()["requests"] == 0


def test_a_system_message_beside_system_prompt_is_refused(wd):
    class Both(LLM):
        def prompt(self, row):
            return [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]

    with pytest.raises(PromptError, match="row 0 returned a system message"):
        steps.prepare(Both("gpt-4o-mini", system_prompt="z"), [{}], wd, rebuild_check=False)


# --------------------------------------------------------------------------- shard sizes


class Counter(LLM):
    def prompt(self, row):
        return f"count {row['n']}"

    def parse(self, row, response):
        return {"n": row["n"]}


def _shard_lines(run: dict, shard: str) -> list[dict]:
    path = os.path.join(run["run_uri"], "requests", f"{shard}.jsonl")
    with open(path, "rb") as handle:
        return [orjson.loads(line) for line in handle]


def _manifest(run: dict) -> dict:
    with open(os.path.join(run["run_uri"], "manifest.json"), "rb") as handle:
        return orjson.loads(handle.read())


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_shard_size_is_honoured_in_batch_mode(wd, backend):
    rows = [{"n": i} for i in range(600)]

    def shard_sizes(backend_params: dict, where: str) -> list[int]:
        llm = Counter("gpt-4o-mini", backend=backend, batch=True, backend_params=backend_params)
        run = steps.prepare(llm, rows, os.path.join(wd, where))
        return [s["requests"] for s in _manifest(run)["shards"]]

    assert shard_sizes({"shard_size": 100}, "a") == [100] * 6
    # the default stays the provider's per-batch limit; batch_size works too, the smaller wins
    assert shard_sizes({}, "b") == [600]
    assert shard_sizes({"shard_size": 300, "batch_size": 200}, "c") == [200] * 3
    # a batch run's shards carry what they hold of the provider's batch queue
    llm = Counter("gpt-4o-mini", backend=backend, batch=True, backend_params={"shard_size": 100})
    manifest = _manifest(steps.prepare(llm, rows, os.path.join(wd, "a")))
    assert all(s["input_tokens"] >= 100 * 4 for s in manifest["shards"])


def test_shard_size_past_the_providers_batch_limit_is_capped(wd, monkeypatch, caplog):
    from curator_flows.batch import sizing

    monkeypatch.setitem(sizing.BATCH_LIMITS, "openai", (50, 200_000_000))
    llm = Counter("gpt-4o-mini", batch=True, backend_params={"shard_size": 80})
    with caplog.at_level("WARNING", logger="curator_flows.prepare"):
        run = steps.prepare(llm, [{"n": i} for i in range(120)], wd)
    assert [len(_shard_lines(run, s)) for s in run["shards"]] == [50, 50, 20]
    assert "batches hold at most 50 requests" in caplog.text


@pytest.mark.parametrize("batch", [False, True])
def test_max_shards_grows_shards_to_fit_and_says_so(wd, batch, caplog):
    llm = Counter("gpt-4o-mini", batch=batch, backend_params={"shard_size": 10})
    rows = [{"n": i} for i in range(95)]
    reference = steps.prepare(llm, rows, wd)  # 10 shards of up to 10
    assert len(reference["shards"]) == 10
    other = os.path.join(wd, "capped")
    with caplog.at_level("WARNING", logger="curator_flows.prepare"):
        run = steps.prepare(llm, rows, other, max_shards=4)
    assert "more than max_shards=4" in caplog.text and "grow to up to 24 requests" in caplog.text
    assert run["shards"] == ["00000", "00001", "00002", "00003"]
    sizes = [len(_shard_lines(run, s)) for s in run["shards"]]
    assert sizes == [24, 24, 24, 23]
    # the same requests, in the same order: the run is the same run
    assert run["run_id"] == reference["run_id"]
    order = [line["row"] for s in run["shards"] for line in _shard_lines(run, s)]
    assert order == list(range(95))
    manifest = _manifest(run)
    assert [s["requests"] for s in manifest["shards"]] == sizes
    if batch:
        assert sum(s["input_tokens"] for s in manifest["shards"]) == sum(
            s["input_tokens"] for s in _manifest(reference)["shards"]
        )
    # under the cap nothing changes, and a generator (read once) is capped the same way
    assert len(steps.prepare(llm, rows, os.path.join(wd, "roomy"), max_shards=50)["shards"]) == 10
    generated = steps.prepare(llm, (r for r in rows), os.path.join(wd, "gen"), max_shards=3)
    assert [len(_shard_lines(generated, s)) for s in generated["shards"]] == [32, 32, 31]


def test_max_shards_beyond_the_providers_batch_limit_is_a_config_error(wd, monkeypatch):
    from curator_flows import ConfigError
    from curator_flows.batch import sizing

    monkeypatch.setitem(sizing.BATCH_LIMITS, "openai", (30, 200_000_000))
    llm = Counter("gpt-4o-mini", batch=True, backend_params={"shard_size": 10})
    with pytest.raises(
        ConfigError, match=r"max_shards=2 batch shards: one openai batch holds at most 30"
    ):
        steps.prepare(llm, [{"n": i} for i in range(95)], wd, max_shards=2)
    assert not os.listdir(wd) or not any(
        os.path.exists(os.path.join(wd, d, "manifest.json")) for d in os.listdir(wd)
    )
    with pytest.raises(ConfigError, match="max_shards must be a positive integer"):
        steps.prepare(llm, [{"n": 1}], wd, max_shards=0)
    # a run prepared in more shards than a later caller can fan out to says so
    steps.prepare(llm, [{"n": i} for i in range(25)], wd)
    with pytest.raises(ConfigError, match=r"prepared before in 3 shards, more than max_shards=2"):
        steps.prepare(llm, [{"n": i} for i in range(25)], wd, max_shards=2)
