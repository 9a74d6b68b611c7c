"""LLM subclasses of the input tests, importable from subprocesses (tests put this folder on
PYTHONPATH)."""

from __future__ import annotations

from curator_flows import LLM


class Stamped(LLM):
    """parse() reports the type and zone of the row's ``at`` as it receives it."""

    def prompt(self, row):
        return f"stamp {row['n']}"

    def parse(self, row, response):
        at = row["at"]
        return {"n": row["n"], "at_type": f"{type(at).__name__} {at.tzinfo}"}
