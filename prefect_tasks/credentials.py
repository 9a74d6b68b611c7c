"""``CuratorCredentials``: a Prefect block holding what a step needs to reach the provider and
the storage: the API key (a ``SecretStr``), the base URL, the provider and fsspec storage
options (a ``SecretDict``).

Invariants:
- the block is turned into one :class:`~curator_flows.credentials.Credentials` value per task
  call and never returned, logged, cached or written: task results, cache keys, artifacts and
  the run directory never see the key (``repr`` and JSON dumps of the block mask it);
- the block's ``provider`` must match the backend of the LLM it is used with (a mismatch is a
  :class:`~curator_flows.errors.ConfigError`: a key sent to the wrong provider is refused there).

Register the block type with ``prefect block register -m prefect_tasks``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from prefect.blocks.core import Block
from prefect.types import SecretDict
from pydantic import Field, SecretStr

from curator_flows.credentials import Credentials
from curator_flows.errors import ConfigError

Provider = Literal["openai", "anthropic", "litellm"]


class CuratorCredentials(Block):
    """The API key, base URL and storage options curator-flows steps use; never stored by them.
    Pass it, or its saved name, as ``credentials=`` to a flow or task: the only way its key
    leaves the block is the :class:`~curator_flows.credentials.Credentials` handed to a step.

    Example:
        ```python
        from prefect_tasks import CuratorCredentials

        CuratorCredentials(api_key="sk-...", provider="openai").save("openai-prod")
        creds = CuratorCredentials.load("openai-prod")
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

    def check_backend(self, backend: str) -> None:
        """Raise :class:`~curator_flows.errors.ConfigError` when this block's provider is not
        the LLM's backend (``litellm`` and ``vllm`` LLMs accept any block)."""
        if backend in ("openai", "anthropic") and self.provider in ("openai", "anthropic"):
            if backend != self.provider:
                raise ConfigError(
                    f"the credentials block is for provider {self.provider!r} but the LLM's "
                    f"backend is {backend!r}: use a {backend} block"
                )
