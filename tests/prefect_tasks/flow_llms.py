"""LLM subclasses for the Prefect tests, importable from child processes (the tests put this
folder and tests/support on PYTHONPATH), and a stand-in for the vLLM generator."""

from __future__ import annotations

import json
import os

# the lenient and tightened Dish LLMs are shared with the engine tests (tests/support)
from dish_llms import REFUSED, Dish, DishWriter, StrictDish, StrictDishWriter  # noqa: F401
from pydantic import BaseModel, ConfigDict, model_validator

from curator_flows import LLM


class Numbered(LLM):
    """Online or batch: "number <n>" (plus an optional simulator fault marker)."""

    def prompt(self, input: dict) -> str:
        return f"number {input['n']}{input.get('marker', '')}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "response": response}


class Take(BaseModel):
    model_config = ConfigDict(title="Take")
    n: int
    take: int


#: numbers whose first take :class:`StrictTake` refuses (set by a test after a lenient run)
REFUSED_FIRST_TAKES: set[int] = set()


# Take's JSON schema (no docstring: it would enter the schema), refusing the first take of
# the numbers in REFUSED_FIRST_TAKES: a tightened response_format for the offline shape.
class StrictTake(BaseModel):
    model_config = ConfigDict(title="Take")
    n: int
    take: int

    @model_validator(mode="after")
    def not_refused(self) -> StrictTake:
        if self.take == 1 and self.n in REFUSED_FIRST_TAKES:
            raise ValueError(f"the first take of {self.n} is refused")
        return self


class OfflineTakes(LLM):
    """Offline shape with a ``response_format``: :class:`TakeCountingGenerator` answers."""

    response_format = Take

    def prompt(self, input: dict) -> str:
        return f"number {input['n']}"

    def parse(self, input: dict, response: Take) -> dict:
        return {"n": response.n, "take": response.take}


class StrictOfflineTakes(OfflineTakes):
    response_format = StrictTake


class OfflineNumbers(LLM):
    """Offline (vLLM) shape: the stand-in generator answers ``{"n": <n>}``."""

    def prompt(self, input: dict) -> str:
        return f"number {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "echo": json.loads(response)["n"]}


class StandInGenerator:
    """Answers each request like vLLM would (no vLLM in this venv); records what it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def generate(self, requests: list[dict]) -> list[dict]:
        out = []
        for request in requests:
            self.seen.append(request["custom_id"])
            n = int(request["messages"][-1]["content"].split()[-1])
            out.append(
                {
                    "custom_id": request["custom_id"],
                    "content": json.dumps({"n": n}),
                    "finish_reason": "stop",
                    "usage": {"prompt_tokens": 10, "completion_tokens": 4},
                }
            )
        return out

    def close(self) -> None:
        pass


class TakeCountingGenerator(StandInGenerator):
    """Answers ``{"n": <n>, "take": <how often it saw this request>}``."""

    def generate(self, requests: list[dict]) -> list[dict]:
        out = super().generate(requests)
        for answer in out:
            take = self.seen.count(answer["custom_id"])
            answer["content"] = json.dumps({**json.loads(answer["content"]), "take": take})
        return out


def install_stand_in_generator() -> None:
    """Make this process's offline steps use :class:`StandInGenerator` instead of vLLM."""
    from curator_flows import offline

    offline.build_generator = lambda llm: StandInGenerator()


# Child processes (a served GPU-pool flow run) import this module when they rebuild the LLM
# from the run manifest, before the offline step builds its generator.
if os.environ.get("CURATOR_TEST_STAND_IN_VLLM") == "1":
    install_stand_in_generator()
