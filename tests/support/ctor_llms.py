"""LLM subclasses with constructor arguments of their own, importable from subprocesses."""

from __future__ import annotations

from curator_flows import LLM


class Styled(LLM):
    """A required and an optional argument of its own; ``parse()`` reads both."""

    def __init__(self, model_name: str, topic: str, *, column: str = "text", **kwargs) -> None:
        super().__init__(model_name, **kwargs)
        self.topic = topic
        self.column = column

    def prompt(self, input: dict) -> str:
        return f"{self.topic}: number {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], self.column: response, "topic": self.topic}


class Handle:
    """Not JSON-serialisable."""


class WithHandle(LLM):
    def __init__(self, model_name: str, handle: Handle, **kwargs) -> None:
        super().__init__(model_name, **kwargs)
        self.handle = handle

    def prompt(self, input: dict) -> str:
        return f"number {input['n']}"


class SetsStateOutsideTheConstructor(LLM):
    def prompt(self, input: dict) -> str:
        return f"number {input['n']}"

    def parse(self, input: dict, response: str) -> dict:
        return {"n": input["n"], "label": getattr(self, "label", None)}
