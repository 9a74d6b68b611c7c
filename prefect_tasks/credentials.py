"""``CuratorCredentials``: a Prefect block holding what a step needs to reach the provider and
the storage: the API key (a ``SecretStr``), the base URL, the provider and fsspec storage
options (a ``SecretDict``).

Invariants:
- the block is turned into one :class:`~curator_flows.credentials.Credentials` value per task
  call and never returned, logged, cached or written: task results, cache keys, artifacts and
  the run directory never see the key (``repr`` and JSON dumps of the block mask it);
- the block's ``provider`` must match the backend of the LLM it is used with (a mismatch is a
  :class:`~curator_flows.errors.ConfigError`: a key sent to the wrong provider is refused there);
- the accessors (``get_credentials``, ``get_endpoint``, ``get_client``, ``get_filesystem``) hand
  the key only to the caller that asks: the steps never call them with anything but
  ``get_credentials``.

Register the block type with ``prefect block register -m prefect_tasks``.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar, Literal

from prefect.blocks.abstract import CredentialsBlock
from prefect.types import SecretDict
from pydantic import Field, SecretStr

from curator_flows.credentials import Credentials, Endpoint, resolve_endpoint
from curator_flows.errors import ConfigError

Provider = Literal["openai", "anthropic", "litellm"]


class CuratorCredentials(CredentialsBlock):
    """The API key, base URL and storage options curator-flows steps use; never stored by them.
    Pass it, or its saved name, as ``credentials=`` to a flow or task: the only way its key
    leaves the block is the :class:`~curator_flows.credentials.Credentials` handed to a step.

    Example:
        ```python
        from prefect_tasks import CuratorCredentials

        CuratorCredentials(api_key="sk-...", provider="openai").save("openai-prod")
        creds = CuratorCredentials.load("openai-prod")
        creds.get_credentials()        # what a step takes: curate(..., credentials=creds)
        client = creds.get_client()    # the provider's SDK client (openai.OpenAI, ...)
        ```
    """

    _block_type_name: ClassVar[str] = "Curator Credentials"
    _block_type_slug: ClassVar[str] = "curator-credentials"
    _description: ClassVar[str] = (
        "API key, base URL and fsspec storage options for curator-flows dataset builds."
    )
    _code_example: ClassVar[str] = """
```python
from prefect_tasks import CuratorCredentials

credentials = CuratorCredentials.load("BLOCK_NAME")
```"""

    provider: Provider = Field(default="openai", description="The LLM provider the key belongs to.")
    api_key: SecretStr | None = Field(
        default=None,
        description="The provider's API key (optional for a local OpenAI-compatible server).",
    )
    base_url: str | None = Field(
        default=None,
        description="An OpenAI-compatible or Anthropic endpoint; the provider's own by default.",
    )
    storage_options: SecretDict = Field(
        default_factory=lambda: SecretDict({}),
        description="fsspec storage options for the working dir, inputs and outputs "
        "(e.g. S3 keys, endpoint_url).",
    )

    def to_credentials(self) -> Credentials:
        """The :class:`~curator_flows.credentials.Credentials` a step takes (used, never
        stored)."""
        return Credentials(
            api_key=self.api_key,
            base_url=self.base_url,
            storage_options=dict(self.storage_options.get_secret_value() or {}),
        )

    def get_credentials(self) -> Credentials:
        """The :class:`~curator_flows.credentials.Credentials` for a step call of your own
        (``steps.run_online(run, shard, credentials=block.get_credentials())``)."""
        return self.to_credentials()

    def get_endpoint(self, batch: bool = False) -> Endpoint:
        """Where the steps send with this block, and the key they send: the block's
        ``base_url``, else the provider's URL variable, else its own endpoint (its batch
        endpoint with ``batch``); a key from the block, else the provider's key variable.
        Raises :class:`~curator_flows.errors.MissingAPIKeyError` for the provider's own
        endpoint without a key."""
        return resolve_endpoint(self.provider, self.to_credentials(), batch=batch)

    def get_client(self, client_type: str | None = None, **options: Any) -> Any:
        """The provider's own SDK client with this block's key and endpoint: ``openai.OpenAI``
        (``client_type="openai"``, for any OpenAI-compatible endpoint) or
        ``anthropic.Anthropic`` (``"anthropic"``); by default the block's ``provider``'s.
        ``options`` go to the client's constructor (``timeout``, ``max_retries``, ...). The SDK
        must be installed (``openai`` comes with the ``litellm`` extra); the steps do not use
        it: they speak the wire formats themselves."""
        kind = client_type or self.provider
        sdks = {"openai": ("openai", "OpenAI"), "anthropic": ("anthropic", "Anthropic")}
        if kind not in sdks:
            raise ConfigError(
                f"get_client: no SDK client for {kind!r}; pass client_type='openai' (any "
                "OpenAI-compatible endpoint, litellm's proxy too) or 'anthropic', or use "
                "get_credentials() / get_endpoint()"
            )
        self.check_backend(kind)  # an Anthropic key is not sent to OpenAI, nor the reverse
        module_name, class_name = sdks[kind]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"get_client({kind!r}) needs the {module_name!r} package: pip install {module_name}"
            ) from exc
        endpoint = resolve_endpoint(kind, self.to_credentials())
        return getattr(module, class_name)(
            api_key=endpoint.api_key, base_url=endpoint.base_url, **options
        )

    def get_filesystem(self, uri: str) -> Any:
        """The fsspec filesystem of ``uri`` with this block's ``storage_options`` (what the
        steps use for the working dir, inputs and outputs): read a published dataset with it."""
        import fsspec

        filesystem, _ = fsspec.core.url_to_fs(
            uri, **dict(self.storage_options.get_secret_value() or {})
        )
        return filesystem

    def check_backend(self, backend: str) -> None:
        """Raise :class:`~curator_flows.errors.ConfigError` when this block's provider is not
        the LLM's backend (``litellm`` and ``vllm`` LLMs accept any block)."""
        if backend in ("openai", "anthropic") and self.provider in ("openai", "anthropic"):
            if backend != self.provider:
                raise ConfigError(
                    f"the credentials block is for provider {self.provider!r} but the LLM's "
                    f"backend is {backend!r}: use a {backend} block"
                )
