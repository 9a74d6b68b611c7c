"""LLMs and a publish that stops mid-way, for tests/test_publish.py (run in subprocesses)."""

from __future__ import annotations

import json
import sys
import time

from pydantic import BaseModel

from curator_flows import LLM


class Versioned(LLM):
    """``parse()`` writes the instance's ``version`` into every row: a new version re-parses."""

    def __init__(self, *args, version: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.version = version

    def prompt(self, input: dict) -> str:
        return f"number {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "version": self.version}


class EchoRows(LLM):
    """``parse()`` returns the input row's own columns: a test decides every published value
    (the row's ``n`` is its prompt, so each row is one request)."""

    def prompt(self, input: dict) -> str:
        return f"echo {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        return dict(input)


class Counted(BaseModel):
    n: int
    count: int


class DeclaredRows(EchoRows):
    """``EchoRows`` whose published schema is declared: ``output_schema = Counted``."""

    output_schema = Counted


class AnnotatedRows(LLM):
    """``parse()`` says it returns ``Counted`` rows (its annotation declares the schema)."""

    def prompt(self, input: dict) -> str:
        return f"count {input['n']}"

    def parse(self, input: dict, response: str) -> list[Counted]:
        return [Counted(n=input["n"], count=input["n"] * 10)]


def publish_then_hang(run_uri: str, output_uri: str, storage_options: dict) -> None:
    """finalize(version=2) to ``output_uri``, hanging (to be killed) after its first part."""
    import curator_flows.publish as publish
    from curator_flows import Credentials, steps

    original = publish._write_parquet
    written = []

    def write_then_hang(*args, **kwargs):
        result = original(*args, **kwargs)
        written.append(args[1])
        print(json.dumps({"written": written}), flush=True)
        time.sleep(600)
        return result

    publish._write_parquet = write_then_hang
    llm = Versioned("gpt-4o-mini", version=2, backend_params={"api_key": "unused"})
    steps.finalize(
        run_uri,
        llm=llm,
        output_uri=output_uri,
        credentials=Credentials(storage_options=storage_options),
    )


if __name__ == "__main__":
    publish_then_hang(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
