"""The ``LLM`` class of Curator's API (see docs/architecture.md).

Invariants:
- construction validates everything and sends nothing (no probe call: it would cost money and
  run at DAG-parse time);
- the constructor's arguments are recorded as given (:meth:`LLM.spec`), so a step that has only
  the run URI rebuilds an equal LLM (:mod:`curator_flows.rebuild`); secrets are never recorded;
- ``__call__`` runs the steps in-process through :mod:`curator_flows.driver`, so an in-process
  run and an orchestrated run produce the same run directory;
- :meth:`LLM.family_fingerprint` holds exactly what changes responses to the same messages, and
  :meth:`LLM.parse_fingerprint` what changes the rows made from a response (``parse()``'s code
  and the instance's own state); neither holds secrets, limits or concurrency.
"""

from __future__ import annotations

from typing import Any

from .config import BackendConfig, Mode
from .errors import ConfigError
from .fingerprint import canonical, code_fingerprint, digest
from .rebuild import constructor_spec, import_path

BACKENDS = ("openai", "anthropic", "litellm", "vllm")
_OPENAI_PREFIXES = (
    "gpt-", "gpt4", "o1", "o3", "o4", "chatgpt-", "ft:gpt", "davinci", "babbage", "codex-",
)  # fmt: skip
#: attributes of every LLM that are recorded elsewhere in the identity (or hold no state)
_BASE_STATE = frozenset({"config", "mode", "_init_args"})


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


def _stable(value: Any) -> Any:
    """A JSON stand-in for ``value`` that is the same in every process (no addresses)."""
    try:
        canonical(value)
        return value
    except TypeError:
        pass
    if isinstance(value, type):
        return import_path(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_stable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    text = repr(value)
    return text if " at 0x" not in text else f"<{type(value).__qualname__}>"


class LLM:
    """Prompt an LLM over a dataset; subclasses override :meth:`prompt` and :meth:`parse`."""

    response_format: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> LLM:
        self = super().__new__(cls)
        self._init_args = (args, kwargs)  # what spec() records to rebuild this LLM elsewhere
        return self

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
        if backend_params is not None and not isinstance(backend_params, dict):
            raise ConfigError(f"backend_params must be a dict, got {type(backend_params).__name__}")
        self.backend_params = dict(backend_params or {})
        self.config = BackendConfig.from_user(self.mode, backend_params)
        if self.mode == "offline":  # engine and sampling values, without importing vLLM
            from .offline import check_params

            check_params(self)
        else:
            from .genparams import validate_generation_params

            validate_generation_params(
                self.backend,
                self.generation_params,
                custom_endpoint=self.config.params.base_url is not None,
            )

    # ------------------------------------------------------------ user hooks
    def prompt(self, input: Any) -> str | list[dict[str, Any]]:
        """Default: a string row or a conversation (a list of messages) as it is, else the
        row's ``prompt`` column."""
        if isinstance(input, dict) and "prompt" in input:
            return input["prompt"]
        if isinstance(input, str | list):
            return input
        raise NotImplementedError(
            "override LLM.prompt(input), or pass plain strings, conversations or rows with a "
            "'prompt' column"
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

    def family_fingerprint(self, run_key: str | None = None) -> str:
        """What makes two requests with the same messages return the same thing; a ``run_key``
        makes a family of its own (fresh generations, no reuse across keys)."""
        schema = self.schema()
        identity: dict[str, Any] = {
            "backend": self.backend,
            "model": self.model_name,
            "generation_params": self.generation_params,
            "schema": schema[1] if schema else None,
            "output_params": self.config.output_params(),
        }
        if run_key is not None:
            identity["run_key"] = run_key
        return digest(canonical(identity))

    def parse_state(self) -> dict[str, Any]:
        """The instance's own state that ``parse()`` may read: its attributes and its class's
        plain attributes, API keys removed, as stable JSON."""
        state: dict[str, Any] = {}
        for cls in reversed(type(self).__mro__):
            if not issubclass(cls, LLM) or cls is LLM:
                continue
            for name, value in vars(cls).items():
                if name.startswith("__") or callable(value) or isinstance(value, property):
                    continue
                if isinstance(value, staticmethod | classmethod):
                    continue
                state[f"class.{name}"] = _stable(value)
        for name, value in vars(self).items():
            if name in _BASE_STATE:
                continue
            if name == "backend_params":
                value = {k: v for k, v in value.items() if k != "api_key"}
            state[name] = _stable(value)
        return state

    def parse_fingerprint(self) -> str:
        """``parse()``'s code and the state it may read: a change re-parses, never re-sends."""
        return digest(code_fingerprint(type(self).parse), canonical(self.parse_state()))

    def spec(self) -> dict[str, Any]:
        """How another process rebuilds this LLM (no secrets): the class and the constructor's
        arguments (see :mod:`curator_flows.rebuild`), plus the resolved settings for people."""
        args, kwargs = getattr(self, "_init_args", ((), {}))
        spec = constructor_spec(type(self), args, kwargs)
        spec.update(
            model_name=self.model_name,
            response_format=import_path(self.response_format) if self.response_format else None,
            batch=self.batch,
            backend=self.backend,
            mode=self.mode,
            generation_params=self.generation_params,
        )
        return spec

    def __call__(
        self,
        dataset: Any = None,
        working_dir: str | None = None,
        *,
        run_key: str | None = None,
        credentials: Any = None,
    ) -> Any:
        """Run every step in-process and return a :class:`~curator_flows.types.CuratorResponse`.

        ``run_key`` (e.g. a nightly build's date) makes the run its own: the same key resumes,
        a new key generates afresh. ``credentials`` (:class:`~curator_flows.Credentials`)
        supplies the API key, base URL and fsspec storage options without storing them."""
        from .driver import run_in_process

        return run_in_process(self, dataset, working_dir, run_key=run_key, credentials=credentials)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_name={self.model_name!r}, backend={self.backend!r}, "
            f"mode={self.mode!r})"
        )
