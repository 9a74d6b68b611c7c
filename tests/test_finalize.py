"""finalize: stored answers judged again by the current model, pending shards named, and every
value stored under one policy (widen the type, else JSON text), over real HTTP against the
simulator."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import sys
import uuid
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import BaseModel, ConfigDict, field_validator

from curator_flows import LLM, IncompleteRunError, steps
from curator_flows.errors import OutputError
from curator_flows.store import RunStore

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from dish_llms import REFUSED, Dish, DishWriter, StrictDish, StrictDishWriter  # noqa: E402


# ----------------------------------------------------------------------------- re-validation
def _sent(sim) -> int:
    return sim.stats()["requests"]


def _refuse(dataset, every: int) -> list[int]:
    REFUSED.clear()
    chosen = [row for row in dataset if row["n"] % every == 0]
    REFUSED.update(row["name"] for row in chosen)
    return [row["n"] for row in chosen]


def test_a_tightened_validator_refuses_stored_answers_and_they_are_sent_again(sim, params, wd):
    assert Dish.model_json_schema() == StrictDish.model_json_schema()
    rows = [{"n": i} for i in range(12)]
    first = DishWriter("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert len(first.dataset) == 12 and _sent(sim) == 12
    refused = _refuse(first.dataset, every=3)

    strict = StrictDishWriter("gpt-4o-mini", backend_params=params(require_all_responses=True))
    result = strict(rows, working_dir=wd)
    # the refused answers were taken back and sent again in the same call; the new answers
    # pass the new rule, nothing stale is in the output
    assert 12 + len(refused) <= _sent(sim) <= 12 + 4 * len(refused)
    assert result.dataset["n"] == list(range(12)) and result.request_stats.failed == 0
    assert not set(result.dataset["name"]) & REFUSED
    kept = {row["n"]: row["name"] for row in first.dataset if row["n"] not in refused}
    assert {row["n"]: row["name"] for row in result.dataset if row["n"] in kept} == kept
    sent = _sent(sim)
    again = strict(rows, working_dir=wd)  # a finished run is a cache hit again
    assert again.dataset["n"] == list(range(12)) and _sent(sim) == sent


class Refusing(BaseModel):  # the same JSON schema as Dish; refuses every answer
    model_config = ConfigDict(title="Dish")
    name: str
    calories: int

    @field_validator("calories")
    @classmethod
    def never(cls, value: int) -> int:
        raise ValueError("refused")


class RefusingWriter(DishWriter):
    response_format = Refusing


def test_when_the_answers_keep_failing_calling_again_sends_only_the_failed_ones(sim, params, wd):
    rows = [{"n": i} for i in range(6)]
    DishWriter("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    refusing = RefusingWriter(
        "gpt-4o-mini", backend_params=params(max_retries=1, require_all_responses=True)
    )
    with pytest.raises(IncompleteRunError) as error:
        refusing(rows, working_dir=wd)
    assert error.value.failed == 6 and _sent(sim) == 6 + 6 * 2
    assert "running again sends them again" in str(error.value)
    with pytest.raises(IncompleteRunError):  # and it does: no row is stuck
        refusing(rows, working_dir=wd)
    assert _sent(sim) == 6 + 6 * 4
    recovered = DishWriter("gpt-4o-mini", backend_params=params())(rows, working_dir=wd)
    assert recovered.dataset["n"] == list(range(6)) and _sent(sim) == 6 + 6 * 5


@pytest.fixture(params=["local", "s3"])
def any_wd(request, wd):
    """A working directory on local disk, or on S3 (moto): invalidation lines are then parts
    named after the success parts they take back."""
    if request.param == "local":
        return wd
    return f"{request.getfixturevalue('s3_bucket')}/runs"


def test_finalize_step_takes_back_refused_answers_and_names_their_shard(sim, params, any_wd):
    wd = any_wd
    rows = [{"n": i} for i in range(12)]
    lenient = DishWriter("gpt-4o-mini", backend_params=params(shard_size=6))
    run = steps.prepare(lenient, rows, wd)
    steps.run_online(run, llm=lenient)
    refused = _refuse(steps.load_response(steps.finalize(run, llm=lenient)).dataset, every=4)
    assert refused == [0, 4, 8]

    strict = StrictDishWriter("gpt-4o-mini", backend_params=params(shard_size=6))
    with pytest.raises(IncompleteRunError) as error:
        steps.finalize(run, llm=strict)
    assert error.value.failed == 3 and error.value.retryable
    assert error.value.pending_shards == ["00000", "00001"]
    assert "00000, 00001" in str(error.value)
    assert steps.status(run)["totals"]["pending"] == 3
    before = _sent(sim)
    assert steps.run_online(run, llm=strict)["sent"] >= 3
    assert _sent(sim) - before <= 3 * 4  # only the refused ones (with retries)
    done = steps.finalize(run, llm=strict)
    assert done["failed"] == 0 and done["rows"] == 12


def test_incomplete_run_names_the_shards_with_pending_work(sim, params, wd):
    llm = DishWriter("gpt-4o-mini", backend_params=params(shard_size=4))
    run = steps.prepare(llm, [{"n": i} for i in range(12)], wd)
    steps.run_online(run, "00001", llm=llm)
    with pytest.raises(IncompleteRunError) as error:
        steps.finalize(run, llm=llm)
    assert error.value.pending_shards == ["00000", "00002"]
    assert "00000, 00002" in str(error.value) and error.value.retryable
    assert error.value.failed == 8 and error.value.total == 12
    steps.run_online(run, ["00000", "00002"], llm=llm)
    assert steps.finalize(run, llm=llm)["rows"] == 12


# ----------------------------------------------------------------------------- the type policy
class Color(enum.Enum):
    red = "red"
    blue = "blue"


class Point(BaseModel):
    x: int
    label: str


PARIS = ZoneInfo("Europe/Paris")


def odd_values(n: int) -> dict:
    """One output row of every awkward kind; ``n`` picks per-row and per-shard variations."""
    return {
        "n": n,
        "big": 2**70 + n if n % 2 else n,  # past int64 in some rows
        "by_shard": n if n < 4 else f"text {n}",  # int in shard 0, str in shard 1
        "keys": {n: "int key", "s": n},
        "surrogate": "ok" if n else "lone \ud800 surrogate",
        "uuid": uuid.UUID(int=n),
        "color": Color.red if n % 2 else Color.blue,
        "price": decimal.Decimal(f"{n}.25"),
        "point": Point(x=n, label=f"p{n}"),
        "when": dt.datetime(2024, 3, 1, 12, n, tzinfo=PARIS),
        "mixed_tz": dt.datetime(2024, 1, 1, n, tzinfo=dt.UTC if n % 2 else PARIS),
        "maybe": None if n % 3 else [n, n + 1],
    }


class OddValues(LLM):
    def prompt(self, input: dict) -> str:
        return f"row {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        return odd_values(input["n"])


def test_every_awkward_value_is_stored_widened_or_as_json_text(sim, params, wd):
    llm = OddValues("gpt-4o-mini", backend_params=params(shard_size=4))
    result = llm([{"n": i} for i in range(8)], working_dir=wd)
    data = result.dataset
    assert len(data) == 8 and data["n"] == list(range(8))
    types = {f.name: str(f.type) for f in data.data.schema}
    assert types["big"].startswith("decimal128(22")  # widened, exact
    assert [int(v) for v in data["big"]] == [odd_values(i)["big"] for i in range(8)]
    assert types["by_shard"] == "string"  # int in one shard, str in the other: JSON text
    assert [json.loads(v) for v in data["by_shard"]] == [
        odd_values(i)["by_shard"] for i in range(8)
    ]
    assert json.loads(data["keys"][3]) == {"3": "int key", "s": 3}
    assert json.loads(data["surrogate"][0]) == "lone \ud800 surrogate"
    assert json.loads(data["surrogate"][1]) == "ok"
    assert data["uuid"][5] == str(uuid.UUID(int=5))
    assert data["color"][:2] == ["blue", "red"]
    assert data["price"][3] == decimal.Decimal("3.25")
    assert data["point"][2] == {"x": 2, "label": "p2"}
    assert types["when"] == "timestamp[us, tz=Europe/Paris]"
    when = data["when"][5]
    assert when.tzinfo is not None and when == odd_values(5)["when"]  # aware, same instant
    assert types["mixed_tz"] == "timestamp[us, tz=UTC]"
    assert [v == odd_values(i)["mixed_tz"] for i, v in enumerate(data["mixed_tz"])] == [True] * 8
    assert data["maybe"][:4] == [[0, 1], None, None, [3, 4]]
    output = RunStore(result.cache_dir).read_json("output/stats.json")
    assert output["columns"]["by_shard"] == "string"
    import pyarrow as pa

    store = RunStore(result.cache_dir)
    files = [pa.ipc.open_stream(store.read_bytes(rel)).schema for rel in output["outputs"]]
    assert all(schema == files[0] for schema in files)


class Unstorable(LLM):
    def prompt(self, input: dict) -> str:
        return f"row {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "thing": object() if input["n"] == 3 else "fine"}


def test_a_value_not_even_json_can_hold_names_the_row_and_the_column(sim, params, wd):
    with pytest.raises(OutputError, match=r"row 3, column 'thing'"):
        Unstorable("gpt-4o-mini", backend_params=params())([{"n": i} for i in range(5)], wd)


class Widening(LLM):
    def prompt(self, input: dict) -> str:
        return f"row {input['n']}"

    def parse(self, input: dict, response: str) -> dict | None:
        n = input["n"]
        if 4 <= n < 8:
            return None  # shard 00001 produces no rows at all
        if n < 4:
            return {"n": n, "score": n, "meta": {"a": n}}
        return {"n": n, "score": n + 0.5, "meta": {"a": n, "b": str(n)}, "late": True}


def test_shards_are_widened_to_one_schema(sim, params, wd):
    result = Widening("gpt-4o-mini", backend_params=params(shard_size=4))(
        [{"n": i} for i in range(12)], working_dir=wd
    )
    data = result.dataset
    assert data["n"] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert data["score"] == [0.0, 1.0, 2.0, 3.0, 8.5, 9.5, 10.5, 11.5]  # int64 + float64
    assert data["meta"][0] == {"a": 0, "b": None} and data["meta"][4] == {"a": 8, "b": "8"}
    assert data["late"] == [None] * 4 + [True] * 4
    import pyarrow as pa

    store = RunStore(result.cache_dir)
    output = store.read_json("output/stats.json")
    schemas = [pa.ipc.open_stream(store.read_bytes(rel)).schema for rel in output["outputs"]]
    assert len(schemas) == 3 and all(schema == schemas[0] for schema in schemas)
    assert output["columns"]["score"] == "double"


LAZY = """
import pickle, sys
from curator_flows import LLM
params = {"base_url": sys.argv[1], "api_key": "k", "progress": "off"}
llm = LLM("gpt-4o-mini", backend_params=params)
result = llm([f"prompt {i}" for i in range(20)], working_dir=sys.argv[2])
heavy = [m for m in ("datasets", "pandas") if m in sys.modules]
assert not heavy, heavy  # the whole call: neither datasets nor pandas
import datasets
assert isinstance(result.dataset, datasets.Dataset) and len(result.dataset) == 20
copy = pickle.loads(pickle.dumps(result))
assert copy.dataset["response"] == result.dataset["response"]
print("ok")
"""


def test_a_call_imports_neither_datasets_nor_pandas_until_the_dataset_is_read(sim, wd):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", LAZY, sim.base_url, wd], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_batch_run_sends_refused_answers_in_a_new_round(wd):
    from curator_flows.testing.simulator import Simulator

    fast = {"validating": 0.05, "in_progress": 0.1, "finalizing": 0.05, "cancelling": 0.05}
    rows = [{"n": i} for i in range(12)]
    with Simulator(batch_timings=fast) as bsim:
        params = {
            "base_url": bsim.base_url,
            "api_key": "sk-test-not-a-secret",
            "batch_check_interval": 0.05,
            "progress": "off",
        }
        lenient = DishWriter("gpt-4o-mini", batch=True, backend="openai", backend_params=params)
        first = lenient(rows, working_dir=wd)
        refused = _refuse(first.dataset, every=3)
        assert bsim.stats()["batches_created"] == 1
        strict = StrictDishWriter(
            "gpt-4o-mini", batch=True, backend="openai", backend_params=params
        )
        result = strict(rows, working_dir=wd)
        assert result.dataset["n"] == list(range(12)) and result.request_stats.failed == 0
        assert not set(result.dataset["name"]) & REFUSED
        assert bsim.stats()["batches_created"] == 2  # the refused ones, in a round of their own
        rounds = RunStore(result.cache_dir).read_json("batches/00000.json")["rounds"]
        assert [r["requests"] for r in rounds] == [12, len(refused)]
