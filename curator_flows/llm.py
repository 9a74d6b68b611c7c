"""The ``LLM`` class of the spec.

Invariants:
- construction validates everything and sends nothing (no probe call: it would cost money and
  run at DAG-parse time);
- ``__call__`` composes the steps of :mod:`curator_flows.steps` in-process, so an in-process run
  and an orchestrated run produce the same run directory;
- :meth:`LLM.identity` holds exactly what changes responses (no secrets, limits or concurrency).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from .config import BackendConfig, ConfigError, Mode
from .fingerprint import canonical, code_fingerprint, digest

BACKENDS = ("openai", "anthropic", "litellm", "vllm")
_OPENAI_PREFIXES = (
    "gpt-", "gpt4", "o1", "o3", "o4", "chatgpt-", "ft:gpt", "davinci", "babbage", "codex-",
)  # fmt: skip


def resolve_backend(model_name: str, backend: str | None, batch: bool) -> str:
    """``backend`` if given; OpenAI model names → openai; Claude in batch mode → anthropic
    (litellm has no batch API); anything else → litellm."""
    if backend is not None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
        return backend
    if model_name.startswith(_OPENAI_PREFIXES):
        return "openai"
    if batch and model_name.startswith("claude"):
        return "anthropic"
    return "litellm"


def _mode(backend: str, batch: bool) -> Mode:
    if backend == "vllm":
        if batch:
            raise ConfigError("backend='vllm' runs offline; batch=True is for provider batch APIs")
        return "offline"
    if batch:
        if backend not in ("openai", "anthropic"):
            raise ConfigError(
                f"batch=True needs backend 'openai' or 'anthropic' (got {backend!r}): "
                "other providers have no batch API here"
            )
        return "batch"
    return "online"


def import_path(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def load_import_path(path: str) -> Any:
    module, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


class LLM:
    """Prompt an LLM over a dataset; subclasses override :meth:`prompt` and :meth:`parse`."""

    response_format: Any = None

    def __init__(
        self,
        model_name: str,
        response_format: Any = None,
        batch: bool = False,
        backend: str | None = None,
        generation_params: dict | None = None,
        backend_params: dict | None = None,
    ) -> None:
        if not isinstance(model_name, str) or not model_name:
            raise ConfigError("model_name must be a non-empty string")
        self.model_name = model_name
        if response_format is not None:
            self.response_format = response_format
        if self.response_format is not None:
            from pydantic import BaseModel

            if not (
                isinstance(self.response_format, type)
                and issubclass(self.response_format, BaseModel)
            ):
                raise ConfigError("response_format must be a pydantic BaseModel subclass")
        self.batch = bool(batch)
        self.backend = resolve_backend(model_name, backend, self.batch)
        self.mode: Mode = _mode(self.backend, self.batch)
        if generation_params is not None and not isinstance(generation_params, dict):
            raise ConfigError("generation_params must be a dict")
        self.generation_params = dict(generation_params or {})
        try:
            canonical(self.generation_params)
        except TypeError as exc:
            raise ConfigError(f"generation_params must be JSON-serialisable: {exc}") from None
        self.backend_params = dict(backend_params or {})
        self.config = BackendConfig.from_user(self.mode, backend_params)
        if self.mode == "offline":  # engine and sampling values, without importing vLLM
            from .offline import check_params

            check_params(self)

    # ------------------------------------------------------------ user hooks
    def prompt(self, input: Any) -> str | list[dict[str, Any]]:
        """Default: the row's ``prompt`` column (string inputs become such rows)."""
        if isinstance(input, dict) and "prompt" in input:
            return input["prompt"]
        if isinstance(input, str):
            return input
        raise NotImplementedError(
            "override LLM.prompt(input), or pass rows with a 'prompt' column or plain strings"
        )

    def parse(self, input: Any, response: Any) -> Any:
        """Default: the structured response's fields, else ``{"response": text}``."""
        if hasattr(response, "model_dump"):
            return response.model_dump(mode="json")
        return {"response": response}

    # ------------------------------------------------------------ identity
    def schema(self) -> tuple[str, dict[str, Any]] | None:
        """``(name, JSON schema)`` of ``response_format``, or ``None``."""
        if self.response_format is None:
            return None
        return self.response_format.__name__, self.response_format.model_json_schema()

    def family_fingerprint(self) -> str:
        """What makes two requests with the same messages return the same thing."""
        schema = self.schema()
        return digest(
            canonical(
                {
                    "backend": self.backend,
                    "model": self.model_name,
                    "generation_params": self.generation_params,
                    "schema": schema[1] if schema else None,
                    "output_params": self.config.output_params(),
                }
            )
        )

    def prompt_fingerprint(self) -> str:
        return code_fingerprint(type(self).prompt)

    def parse_fingerprint(self) -> str:
        return code_fingerprint(type(self).parse)

    def spec(self) -> dict[str, Any]:
        """How another process rebuilds this LLM (no secrets): see :func:`llm_from_spec`."""
        return {
            "class": import_path(type(self)),
            "model_name": self.model_name,
            "response_format": import_path(self.response_format) if self.response_format else None,
            "batch": self.batch,
            "backend": self.backend,
            "generation_params": self.generation_params,
            "backend_params": {k: v for k, v in self.backend_params.items() if k != "api_key"},
        }

    def __call__(self, dataset: Any = None, working_dir: str | None = None) -> Any:
        """Run every step in-process and return a :class:`~curator_flows.types.CuratorResponse`."""
        from .steps import run_in_process

        return run_in_process(self, dataset, working_dir)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_name={self.model_name!r}, backend={self.backend!r}, "
            f"mode={self.mode!r})"
        )


def llm_from_spec(spec: dict[str, Any], **overrides: Any) -> LLM:
    """Rebuild the LLM a manifest describes, importing its class; ``overrides`` (for example
    ``backend_params`` with an ``api_key``) are merged in."""
    try:
        cls = load_import_path(spec["class"])
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            f"cannot import the LLM class {spec['class']!r} recorded in the run manifest ({exc}); "
            "make it importable on this worker or pass llm= to the step"
        ) from None
    kwargs = {
        "model_name": spec["model_name"],
        "batch": spec["batch"],
        "backend": spec["backend"],
        "generation_params": spec["generation_params"],
        "backend_params": {**spec["backend_params"], **overrides.pop("backend_params", {})},
    }
    if spec.get("response_format"):
        kwargs["response_format"] = load_import_path(spec["response_format"])
    kwargs.update(overrides)
    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return cls(**kwargs)
