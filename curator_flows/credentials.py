"""Credentials: the one place where API keys, base URLs and fsspec storage options are resolved.

Invariants:
- a key is looked up in this order: ``Credentials.api_key``, ``backend_params["api_key"]``, the
  provider's environment variable (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ...); nothing else
  in the library reads those variables;
- a base URL: ``Credentials.base_url``, ``backend_params["base_url"]``, the provider's URL
  variable, then the provider's own endpoint (for batch, its batch endpoint when it has one);
- OpenAI-compatible providers that Curator names as backends (:data:`PROVIDER_ALIASES`) speak
  the openai wire format with their own endpoint and key variable; Gemini and Mistral go
  through litellm, which reads their key variables (``GEMINI_API_KEY``, ``MISTRAL_API_KEY``)
  itself unless a key is given;
- a :class:`Credentials` value never shows its key: ``repr``, ``str`` and :meth:`public_dict`
  mask it, and nothing here writes to the run directory;
- a key given to an ``LLM`` (``backend_params["api_key"]``) is held as a :class:`Secret`: shown
  as a mask everywhere, revealed only to build request headers, and left behind when the LLM is
  pickled or serialized (then the key comes from credentials or the environment, as for an LLM
  rebuilt from a run directory);
- ``storage_options`` reach every fsspec call a step makes (run directory, input URIs,
  published outputs), so no process-global fsspec configuration is needed;
- a ``gs://`` location without Google credentials fails at once with a
  :class:`~curator_flows.errors.ConfigError` saying which credentials were looked for
  (:func:`check_storage_credentials`, which reads files and variables only, never the network),
  instead of gcsfs probing the metadata server and failing on DNS most of a minute later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from .errors import ConfigError

MASK = "**********"


class Secret:
    """An API key that shows itself to no one but the HTTP layer (:meth:`reveal`, or
    ``get_secret_value`` as pydantic's ``SecretStr`` has it).

    ``repr``, ``str`` and ``format`` show :data:`MASK`; it has no ``__dict__`` for an encoder to
    walk (JSON encoders refuse it); pickling (process pools, Airflow's and Prefect's
    serialization, cloudpickle) withholds the value: an unpickled Secret is empty and
    :attr:`withheld`, so a pickled LLM takes its key from credentials or the environment, as an
    LLM rebuilt from a run directory does. Copies (``copy``, ``deepcopy``) are the same object,
    so an orchestrator copying an operator keeps the key in the process that built it."""

    __slots__ = ("_value", "withheld")

    def __init__(self, value: str | None, *, withheld: bool = False) -> None:
        object.__setattr__(self, "_value", value or None)
        object.__setattr__(self, "withheld", withheld)

    @classmethod
    def of(cls, value: Any) -> Secret | None:
        """``value`` (a string, a ``SecretStr``, a :class:`Secret` or ``None``) as a Secret."""
        if value is None or isinstance(value, Secret):
            return value
        if isinstance(value, SecretStr):
            return cls(value.get_secret_value())
        if isinstance(value, str):
            return cls(value)
        raise ConfigError(f"an API key must be a string, got {type(value).__name__}")

    def reveal(self) -> str | None:
        """The key, for request headers only."""
        return self._value

    get_secret_value = reveal

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Secret is immutable")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_withheld, ())

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "Secret(withheld)" if self.withheld else f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)


def _withheld() -> Secret:
    return Secret(None, withheld=True)


def hide_keys(value: Any) -> Any:
    """``value`` with every ``api_key`` entry of its dicts (at any depth) held as a
    :class:`Secret`; containers holding one are copied, nothing given is changed."""
    if isinstance(value, dict):
        hidden = {
            k: Secret.of(v) if k == "api_key" and not isinstance(v, dict) else hide_keys(v)
            for k, v in value.items()
        }
        return hidden if any(hidden[k] is not value[k] for k in value) else value
    if isinstance(value, list | tuple):
        items = [hide_keys(v) for v in value]
        changed = any(a is not b for a, b in zip(items, value, strict=True))
        return type(value)(items) if changed else value
    return value


#: (API key variable, base URL variable, default base URL) per provider ("" = no variable)
PROVIDER_ENV: dict[str, tuple[str, str, str]] = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL", "https://api.openai.com/v1"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
    "klusterai": ("KLUSTERAI_API_KEY", "", "https://api.kluster.ai/v1"),
    "inference.net": ("INFERENCE_API_KEY", "", "https://api.inference.net/v1"),
}
#: providers whose batch API lives elsewhere than their online API
BATCH_BASE_URLS: dict[str, str] = {"inference.net": "https://batch.inference.net/v1"}
#: providers Curator names as backends → the backend that reaches them: the openai wire format
#: for OpenAI-compatible ones, litellm (model names under the provider's litellm prefix,
#: ``gemini/...``) for the others
PROVIDER_ALIASES: dict[str, str] = {
    "klusterai": "openai",
    "inference.net": "openai",
    "gemini": "litellm",
    "mistral": "litellm",
}


def default_base_url(provider: str, batch: bool = False) -> str:
    """The provider's own endpoint (``""`` for an unknown provider)."""
    if batch and provider in BATCH_BASE_URLS:
        return BATCH_BASE_URLS[provider]
    return PROVIDER_ENV.get(provider, ("", "", ""))[2]


@dataclass(frozen=True)
class Credentials:
    """What a step needs to reach the provider and the storage, none of which is stored.

    ``api_key`` (kept as a ``SecretStr``), ``base_url`` (an OpenAI-compatible or Anthropic
    endpoint) and ``storage_options`` (passed to every fsspec filesystem, e.g. S3 keys or an
    ``endpoint_url``). Every field is optional: what is missing falls back to the LLM's
    ``backend_params``, then to the environment."""

    api_key: SecretStr | None = None
    base_url: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        key = self.api_key
        if isinstance(key, str):
            object.__setattr__(self, "api_key", SecretStr(key) if key else None)
        elif key is not None and not isinstance(key, SecretStr):
            raise ConfigError("Credentials.api_key must be a string or a SecretStr")
        if self.base_url is not None:
            check_base_url(self.base_url, "Credentials.base_url")
        if self.storage_options is None:
            object.__setattr__(self, "storage_options", {})
        if not isinstance(self.storage_options, dict):
            raise ConfigError("Credentials.storage_options must be a dict")

    @classmethod
    def coerce(cls, value: Credentials | dict[str, Any] | None) -> Credentials:
        """``value`` as :class:`Credentials` (a dict of its fields is accepted; ``None`` gives
        empty credentials)."""
        if value is None:
            return cls()
        if isinstance(value, Credentials):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"api_key", "base_url", "storage_options"}
            if unknown:
                raise ConfigError(
                    f"unknown credentials key(s) {sorted(unknown)}; "
                    "allowed: api_key, base_url, storage_options"
                )
            return cls(**value)
        raise ConfigError(
            f"credentials must be a Credentials or a dict, got {type(value).__name__}"
        )

    def secret(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key is not None else None

    def public_dict(self) -> dict[str, Any]:
        """Safe to log: the key masked, storage option values masked."""
        return {
            "api_key": "**********" if self.api_key is not None else None,
            "base_url": self.base_url,
            "storage_options": sorted(self.storage_options),
        }

    def __repr__(self) -> str:
        return f"Credentials({self.public_dict()})"

    __str__ = __repr__


@dataclass(frozen=True)
class Endpoint:
    """A resolved provider endpoint: where to send and with which key (``None``: no key).
    ``backend`` is the provider (``openai``, ``klusterai``, ...)."""

    backend: str
    base_url: str
    api_key: str | None = field(repr=False)
    batch: bool = False

    @property
    def is_default(self) -> bool:
        default = default_base_url(self.backend, self.batch)
        return bool(default) and self.base_url.rstrip("/") == default


def resolve_endpoint(
    backend: str,
    credentials: Credentials | None = None,
    backend_params: dict[str, Any] | None = None,
    *,
    batch: bool = False,
) -> Endpoint:
    """The endpoint and key of provider ``backend`` (online, or its batch API): credentials,
    then ``backend_params``, then the environment. Raises
    :class:`~curator_flows.errors.MissingAPIKeyError` when the provider's own endpoint would be
    called without a key (a local OpenAI-compatible server needs none)."""
    from .errors import MissingAPIKeyError

    credentials = credentials or Credentials()
    params = backend_params or {}
    key_var, url_var, _ = PROVIDER_ENV.get(backend, ("", "", ""))
    base_url = credentials.base_url or params.get("base_url")
    from_env = (os.environ.get(url_var) if url_var else None) or ""
    if not base_url and from_env:
        check_base_url(from_env, url_var)
    base_url = base_url or from_env
    base_url = (base_url or default_base_url(backend, batch)).rstrip("/")
    key = credentials.secret() or _param_key(params.get("api_key"))
    if not key and key_var:
        key = os.environ.get(key_var) or None
    endpoint = Endpoint(backend, base_url, key, batch)
    if key is None and endpoint.is_default:
        withheld = getattr(params.get("api_key"), "withheld", False)
        raise MissingAPIKeyError(
            f"no {backend} API key: set {key_var}, pass credentials=Credentials(api_key=...) "
            "to the step, or backend_params['api_key']"
            + (
                " (this LLM was pickled or serialized, and its backend_params['api_key'] is "
                "never carried along)"
                if withheld
                else ""
            )
        )
    return endpoint


def check_base_url(url: Any, source: str) -> None:
    """Raise :class:`~curator_flows.errors.ConfigError` unless ``url`` is an http(s) URL with a
    host (``localhost:8000/v1`` without a scheme would otherwise fail every request, retryably,
    as an unreachable endpoint)."""
    from urllib.parse import urlsplit

    if not isinstance(url, str):
        raise ConfigError(f"{source} must be a string, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or url != url.strip():
        raise ConfigError(
            f"{source}={url!r} is not an http(s) URL with a host: give it whole, e.g. "
            "'https://api.openai.com/v1' or 'http://localhost:8000/v1'"
        )


#: URI schemes of Google Cloud Storage (gcsfs)
GCS_SCHEMES = ("gs", "gcs")
#: where Linux tells a Google Cloud VM (GCE, GKE, Composer) apart without a network call
GCE_PRODUCT_NAME_FILE = "/sys/class/dmi/id/product_name"
#: variables that Google Cloud runtimes set (or that point at a metadata server explicitly)
_GOOGLE_RUNTIME_VARIABLES = (
    "GCE_METADATA_HOST", "GCE_METADATA_ROOT", "GCE_METADATA_IP", "K_SERVICE", "CLOUD_RUN_JOB",
    "FUNCTION_TARGET", "GAE_ENV", "GAE_APPLICATION",
)  # fmt: skip


def check_storage_credentials(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Raise :class:`~curator_flows.errors.ConfigError` when ``uri`` is on Google Cloud Storage
    and no Google credentials can be found, deciding from files and variables only (no network
    call): a ``token`` in ``storage_options`` or fsspec's config, ``GOOGLE_APPLICATION_CREDENTIALS``
    (an existing file), gcloud's application-default credentials, gcsfs's token cache, or a
    Google Cloud machine or runtime (whose metadata server gives credentials)."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme not in GCS_SCHEMES or (storage_options or {}).get("token") is not None:
        return
    import fsspec.config

    if any((fsspec.config.conf.get(name) or {}).get("token") is not None for name in GCS_SCHEMES):
        return
    problem = _google_credentials_problem()
    if problem is not None:
        raise ConfigError(
            f"{uri}: {problem}. Set GOOGLE_APPLICATION_CREDENTIALS to a service-account key "
            "file, run `gcloud auth application-default login`, or pass the token in the "
            "storage options (Credentials(storage_options={'token': <key file or credentials>}), "
            "{'token': 'anon'} for a public bucket)"
        )


def _google_credentials_problem() -> str | None:
    """Why no Google credentials can be used here, or ``None`` when some can."""
    explicit = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if explicit:
        if os.path.isfile(explicit):
            return None
        return f"GOOGLE_APPLICATION_CREDENTIALS points at {explicit}, which is not a file"
    config_dir = os.environ.get("CLOUDSDK_CONFIG") or os.path.join(
        os.environ.get("APPDATA", "") if os.name == "nt" else os.path.expanduser("~/.config"),
        "gcloud",
    )
    adc = os.path.join(config_dir, "application_default_credentials.json")
    if os.path.isfile(adc) or os.path.isfile(os.path.expanduser("~/.gcs_tokens")):
        return None
    if any(os.environ.get(name) for name in _GOOGLE_RUNTIME_VARIABLES) or _on_google_vm():
        return None
    return (
        "no Google credentials found: GOOGLE_APPLICATION_CREDENTIALS is not set, there is no "
        f"application-default credentials file ({adc}) nor gcsfs token cache (~/.gcs_tokens), "
        "no token in the storage options, and this is not a Google Cloud machine (no metadata "
        "server to ask)"
    )


def _on_google_vm() -> bool:
    try:
        with open(GCE_PRODUCT_NAME_FILE) as handle:
            return handle.read().strip().startswith("Google")
    except OSError:
        return False


def _param_key(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Secret | SecretStr):
        return value.get_secret_value() or None
    return str(value) or None


#: providers whose keys only their own API accepts (litellm and compatible servers take any)
DIRECT_PROVIDERS = ("openai", "anthropic")


def check_provider(backend: str, provider: str | None, *, source: str, remedy: str) -> None:
    """Refuse credentials meant for one direct provider (:data:`DIRECT_PROVIDERS`) used with an
    LLM whose backend is the other one: its key would be sent to the wrong API. Any other
    pairing (``litellm``, ``vllm``, an unset ``provider``) passes. ``source`` names the
    credentials in the message (``"connection 'x'"``), ``remedy`` says what to use instead."""
    if provider is None or backend == provider:
        return
    if backend in DIRECT_PROVIDERS and provider in DIRECT_PROVIDERS:
        raise ConfigError(
            f"{source} is for provider {provider!r} but the LLM's backend is {backend!r}: {remedy}"
        )
