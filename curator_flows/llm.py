"""The ``LLM`` class of Curator's API (see docs/architecture.md).

Invariants:
- construction validates everything and sends nothing (no probe call: it would cost money and
  run at DAG-parse time): a litellm model id litellm cannot route, a provider batch API or a
  Curator feature that is left out (``NotSupportedError``), a completion window the provider
  never accepts all fail here;
- the constructor's arguments are recorded as given (:meth:`LLM.spec`), so a step that has only
  the run URI rebuilds an equal LLM (:mod:`curator_flows.rebuild`); secrets are never recorded;
- an API key given to the LLM (``backend_params["api_key"]``, or an ``api_key`` argument) is
  held as a :class:`~curator_flows.credentials.Secret` in every attribute (``backend_params``,
  the recorded arguments, the validated config): masked in ``repr``, JSON and logs, revealed
  only to the HTTP layer, and never in a pickle (Airflow's and Prefect's serialization, process
  pools); an unpickled LLM takes its key from credentials or the environment;
- ``__call__`` runs the steps in-process through :mod:`curator_flows.driver`, so an in-process
  run and an orchestrated run produce the same run directory;
- :meth:`LLM.family_fingerprint` holds exactly what changes responses to the same messages, and
  :meth:`LLM.parse_fingerprint` what changes the rows made from a response (``parse()``'s code
  and the instance's own state); neither holds secrets, limits or concurrency.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from .config import BackendConfig, Mode
from .credentials import PROVIDER_ALIASES, hide_keys
from .errors import ConfigError, NotSupportedError
from .fingerprint import canonical, code_fingerprint, digest
from .rebuild import constructor_spec, import_path, load_import_path

if TYPE_CHECKING:
    from .types import CuratorResponse

log = logging.getLogger(__name__)

BACKENDS = ("openai", "anthropic", "litellm", "vllm")
#: provider aliases reached through litellm, whose batch APIs are left out: why, and the key
_NO_BATCH_API = {
    "gemini": (
        "Curator's Gemini batch runs on Vertex AI batch prediction (a Google Cloud project and "
        "a GCS bucket), which curator-flows does not support",
        "GEMINI_API_KEY",
    ),
    "mistral": ("Mistral's batch API is not supported by curator-flows", "MISTRAL_API_KEY"),
}
#: backends of Curator that this library leaves out → what to use instead
_LEFT_OUT_BACKENDS = {
    "code_executor": (
        "Curator's code-execution backend is not supported: curator-flows only prompts LLMs; "
        "run generated code in a task of your own after the LLM stage"
    ),
}
_OPENAI_PREFIXES = (
    "gpt-", "gpt4", "o1", "o3", "o4", "chatgpt-", "ft:gpt", "davinci", "babbage", "codex-",
)  # fmt: skip
#: attributes of every LLM that are recorded elsewhere in the identity (or hold no state)
_BASE_STATE = frozenset({"config", "mode", "_init_args"})
#: values of ``CURATOR_DISABLE_CACHE`` that turn reuse off (as Curator reads it)
_TRUE = ("1", "true")
#: values of ``CURATOR_VIEWER`` that ask Curator for its hosted viewer
_VIEWER_ON = ("1", "true", "t")


def resolve_provider(model_name: str, backend: str | None, batch: bool) -> tuple[str, str]:
    """``(backend, provider)``: the wire format and whose endpoint and key it uses (the same
    but for the aliases of :data:`~curator_flows.credentials.PROVIDER_ALIASES`). ``backend``
    if given (an OpenAI-compatible provider alias counts as ``openai``, ``gemini`` and
    ``mistral`` as ``litellm``, online only); else OpenAI model names → openai, Claude models →
    anthropic (as Curator picks them), anything else → litellm."""
    if backend is not None:
        if backend in _NO_BATCH_API and batch:
            reason, key_var = _NO_BATCH_API[backend]
            raise NotSupportedError(
                f"backend={backend!r} with batch=True: {reason}. Use batch=False (backend="
                f"{backend!r} sends through litellm as '{backend}/<model>', with {key_var}), or "
                "a provider batch API that is supported: backend='openai' or 'anthropic' with "
                "batch=True"
            )
        if backend in PROVIDER_ALIASES:
            return PROVIDER_ALIASES[backend], backend
        if backend in _LEFT_OUT_BACKENDS:
            raise NotSupportedError(f"backend={backend!r}: {_LEFT_OUT_BACKENDS[backend]}")
        if backend not in BACKENDS:
            choices = [*BACKENDS, *PROVIDER_ALIASES]
            raise ConfigError(f"unknown backend {backend!r}; choose one of {choices}")
        return backend, backend
    name = model_name.lower()
    if name.startswith(_OPENAI_PREFIXES):
        return "openai", "openai"
    if name.startswith("claude"):
        return "anthropic", "anthropic"
    return "litellm", "litellm"


def cache_disabled() -> bool:
    """``CURATOR_DISABLE_CACHE`` is set to ``1`` or ``true`` (any case)."""
    return os.environ.get("CURATOR_DISABLE_CACHE", "").strip().lower() in _TRUE


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


def _check_completion_window(llm: LLM) -> None:
    """Refuse a ``completion_window`` the provider's own batch API never accepts: OpenAI's
    takes only ``"24h"`` (a 400 at submit otherwise), and Anthropic's Message Batches have no
    window to choose (they end within 24 hours). Another endpoint (a ``base_url``, an
    OpenAI-compatible alias) judges its own windows."""
    window = llm.config.params.completion_window
    if window == "24h" or llm.provider != llm.backend or llm.config.params.base_url:
        return
    if llm.backend == "openai":
        raise ConfigError(
            f"backend_params['completion_window']={window!r}: OpenAI's Batch API accepts only "
            "'24h' (it answers 400 to anything else); leave it out or set '24h'"
        )
    raise ConfigError(
        f"backend_params['completion_window']={window!r}: Anthropic's Message Batches have no "
        "completion window to set (each batch ends within 24 hours); leave it out"
    )


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
    """Prompt an LLM over a dataset; subclasses override :meth:`prompt` and :meth:`parse`.

    ``return_completions_object = True`` (a class attribute, as in Curator): ``parse()``
    receives the provider's whole answer (an OpenAI chat completion dict with ``choices``, tool
    calls and usage; an Anthropic message with its content blocks) instead of its text."""

    response_format: Any = None
    return_completions_object: bool = False
    #: the schema of the published dataset, when ``parse()``'s annotation does not say it: a
    #: ``pyarrow.Schema``, a pydantic model or a ``TypedDict`` (see
    #: :mod:`curator_flows.output_schema`)
    output_schema: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> LLM:
        self = super().__new__(cls)
        # what spec() records to rebuild this LLM elsewhere (keys held as Secrets, never kept)
        self._init_args = (hide_keys(args), hide_keys(kwargs))
        return self

    def __init__(
        self,
        model_name: str,
        response_format: Any = None,
        batch: bool = False,
        backend: str | None = None,
        generation_params: dict | None = None,
        backend_params: dict | None = None,
        system_prompt: str | None = None,
        output_schema: Any = None,
    ) -> None:
        if not isinstance(model_name, str) or not model_name:
            raise ConfigError("model_name must be a non-empty string")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ConfigError(f"system_prompt must be a string, got {type(system_prompt).__name__}")
        self.model_name = model_name
        #: sent as the first (system) message of every request; part of what a run sends
        self.system_prompt = system_prompt or None
        if response_format is not None:
            self.response_format = response_format
        if self.response_format is not None:
            from pydantic import BaseModel

            if not (
                isinstance(self.response_format, type)
                and issubclass(self.response_format, BaseModel)
            ):
                raise ConfigError("response_format must be a pydantic BaseModel subclass")
        if output_schema is not None:  # an instance attribute only when given (parse state)
            self.output_schema = output_schema
        from .output_schema import check_output_schema

        check_output_schema(self.output_schema)
        self.batch = bool(batch)
        self.backend, self.provider = resolve_provider(model_name, backend, self.batch)
        if self.backend == "litellm":  # what litellm is sent: gemini-2.0-flash → gemini/...
            from .backends.litellm_routing import litellm_model

            self.model_name = litellm_model(model_name, self.provider)
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
        self.backend_params = hide_keys(dict(backend_params or {}))
        self.config = BackendConfig.from_user(self.mode, backend_params)
        if self.mode == "offline":  # engine and sampling values, without importing vLLM
            from .offline import check_params

            check_params(self)
        else:
            from .genparams import validate_generation_params

            validate_generation_params(
                self.backend,
                self.generation_params,
                custom_endpoint=self.config.params.base_url is not None
                or self.provider != self.backend,
            )
        if self.mode == "online" and self.backend == "litellm":
            from .backends.litellm_routing import check_model

            check_model(self.model_name, self.config.params.base_url, self.generation_params)
        if self.mode == "batch":
            _check_completion_window(self)

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
        if self.provider != self.backend:  # another provider's model answers
            identity["provider"] = self.provider
        if self.return_completions_object:  # responses store the whole completion
            identity["completions_object"] = True
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
            provider=self.provider,
            mode=self.mode,
            generation_params=self.generation_params,
        )
        return spec

    def __call__(
        self,
        dataset: Any = None,
        working_dir: str | None = None,
        batch_cancel: bool = False,
        batch_cancel_auto_confirm: bool = False,
        cache_dir: str | None = None,
        *,
        run_key: str | None = None,
        credentials: Any = None,
    ) -> CuratorResponse:
        """Run every step in-process and return a :class:`~curator_flows.types.CuratorResponse`.

        Curator's arguments: ``working_dir`` (or its alias ``cache_dir``; default
        ``CURATOR_FLOWS_WORKING_DIR``, then ``CURATOR_CACHE_DIR``, then
        ``~/.cache/curator-flows``); ``batch_cancel=True`` cancels the run's live batches and
        returns without sending (no prompt, so ``batch_cancel_auto_confirm`` changes nothing).
        ``CURATOR_DISABLE_CACHE=1`` makes this call a fresh run of its own (see
        :func:`fresh_run_key`).

        ``run_key`` (e.g. a nightly build's date) makes the run its own: the same key resumes,
        a new key generates afresh. ``credentials`` (:class:`~curator_flows.Credentials`)
        supplies the API key, base URL and fsspec storage options without storing them."""
        del batch_cancel_auto_confirm  # nothing is ever asked interactively
        _warn_if_viewer_asked()
        working_dir = _working_dir_argument(working_dir, cache_dir)
        if cache_disabled():
            run_key = fresh_run_key(run_key)
        if batch_cancel:
            if self.mode == "batch":
                return self._cancel_batches(dataset, working_dir, run_key, credentials)
            log.warning("batch_cancel=True is ignored: %r does not run in batch mode", self)
        from .driver import run_in_process

        return run_in_process(self, dataset, working_dir, run_key=run_key, credentials=credentials)

    def _cancel_batches(
        self, dataset: Any, working_dir: str | None, run_key: str | None, credentials: Any
    ) -> CuratorResponse:
        """Cancel the live batches of the run of ``dataset`` (sending nothing) and return a
        response whose ``metadata["cancel"]`` says what was cancelled."""
        from .batch.context import open_context
        from .batch.steps import cancel_run
        from .credentials import Credentials
        from .prepare import prepare_run
        from .types import CuratorResponse

        credentials = Credentials.coerce(credentials)
        store, manifest, _ = prepare_run(
            self, dataset, working_dir, run_key=run_key, credentials=credentials
        )
        result = cancel_run(open_context(store.uri, self, credentials))
        log.info("cancelled the batches of run %s: %s", manifest["run_id"], result)
        return CuratorResponse(
            dataset=None,
            model_name=self.model_name,
            cache_dir=store.uri,
            batch_mode=True,
            metadata={"run_id": manifest["run_id"], "run_uri": store.uri, "cancel": result},
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_name={self.model_name!r}, backend={self.backend!r}, "
            f"mode={self.mode!r})"
        )


_viewer_warned = False


def _warn_if_viewer_asked() -> None:
    """Say once per process that ``CURATOR_VIEWER`` (Curator's switch for its hosted viewer)
    does nothing here, and what does."""
    global _viewer_warned
    if _viewer_warned or os.environ.get("CURATOR_VIEWER", "").strip().lower() not in _VIEWER_ON:
        return
    from .unsupported import VIEWER_INSTEAD

    _viewer_warned = True
    log.warning(
        "CURATOR_VIEWER is set, but the hosted Curator Viewer is not supported: %s", VIEWER_INSTEAD
    )


def _working_dir_argument(working_dir: str | None, cache_dir: Any) -> str | None:
    """``working_dir``, or Curator's ``cache_dir`` alias (a path or ``pathlib.Path``)."""
    if cache_dir is not None:
        cache_dir = os.fspath(cache_dir)
        if working_dir is not None and os.fspath(working_dir) != cache_dir:
            raise ConfigError(
                f"working_dir={working_dir!r} and cache_dir={cache_dir!r} name different "
                "directories; cache_dir is an alias of working_dir: pass one of them"
            )
        return cache_dir
    return os.fspath(working_dir) if working_dir is not None else None


def fresh_run_key(run_key: str | None) -> str:
    """A run key no other call uses (``CURATOR_DISABLE_CACHE``): the run gets a family of its
    own, so it resumes nothing, copies no response of an earlier run, and no later run copies
    its responses either; the given ``run_key``, if any, is kept as its prefix."""
    import uuid

    fresh = f"fresh-{uuid.uuid4().hex}"
    return f"{run_key}/{fresh}" if run_key is not None else fresh


def build_llm(
    llm: LLM | str,
    llm_kwargs: dict[str, Any] | None = None,
    *,
    backend_defaults: dict[str, Any] | None = None,
) -> LLM:
    """``llm`` as an :class:`LLM`, as orchestrators are given it: an instance as is; an import
    path (``"package.module:Class"`` or ``"package.module.Class"``) of an ``LLM`` subclass,
    called with ``llm_kwargs`` (their ``backend_params`` over ``backend_defaults``, e.g. an
    Airflow connection's); or the import path of an ``LLM`` instance.

    Invariants: every refusal is a :class:`~curator_flows.errors.ConfigError` (not retryable)
    naming ``llm``; ``llm_kwargs`` never carry an API key (orchestrators store them as given:
    the key goes in the step's ``credentials``)."""
    if isinstance(llm, LLM):
        if llm_kwargs:
            raise ConfigError("llm_kwargs are only for an import path, not an LLM instance")
        return llm
    if not isinstance(llm, str) or not llm.strip():
        raise ConfigError(
            "llm must be an LLM instance or an import path such as "
            f"'my_project.generators:RecipeGenerator', got {llm!r}"
        )
    kwargs = dict(llm_kwargs or {})
    if "api_key" in (kwargs.get("backend_params") or {}):
        raise ConfigError(
            f"llm_kwargs of {llm!r} hold backend_params['api_key']: orchestrators store them as "
            "given; pass the key as credentials (an Airflow connection's password, a "
            "CuratorCredentials block, Credentials(api_key=...))"
        )
    path = llm.strip()
    if ":" not in path:
        module, _, name = path.rpartition(".")
        path = f"{module}:{name}"
    try:
        target = load_import_path(path)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"llm={llm!r} cannot be imported: {type(exc).__name__}: {exc}") from None
    if isinstance(target, LLM):
        if kwargs:
            raise ConfigError(f"llm={llm!r} is an LLM instance: it takes no llm_kwargs")
        return target
    if not (isinstance(target, type) and issubclass(target, LLM)):
        raise ConfigError(f"llm={llm!r} is not an LLM subclass or instance")
    params = {**(backend_defaults or {}), **(kwargs.get("backend_params") or {})}
    if params:
        kwargs["backend_params"] = params
    try:
        return target(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"building llm={llm!r} failed: {type(exc).__name__}: {exc}") from None
