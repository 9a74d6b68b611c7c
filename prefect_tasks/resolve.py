"""Turning what a flow or task is given into what a step takes: an ``LLM`` (an instance, or an
import path with constructor arguments) and one :class:`~curator_flows.credentials.Credentials`
value (a ``CuratorCredentials`` block, a saved block's name, ``Credentials`` or a dict of its
fields).

Invariant: credentials are resolved per call and handed to the step; nothing here returns,
logs or stores the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from curator_flows import steps
from curator_flows.credentials import Credentials
from curator_flows.errors import ConfigError
from curator_flows.llm import LLM

if TYPE_CHECKING:
    from .credentials import CuratorCredentials

CredentialsLike = Any  # CuratorCredentials | str (a block name) | Credentials | dict | None


def resolve_llm(llm: Any, llm_kwargs: dict[str, Any] | None = None) -> LLM:
    """``llm`` as an :class:`~curator_flows.llm.LLM` (an instance, or an import path built with
    ``llm_kwargs``): :func:`curator_flows.steps.build_llm`."""
    return steps.build_llm(llm, llm_kwargs)


def load_block(value: CredentialsLike) -> CuratorCredentials | None:
    """The ``CuratorCredentials`` block ``value`` is or names (``None`` for other kinds)."""
    from .credentials import CuratorCredentials

    if isinstance(value, CuratorCredentials):
        return value
    if isinstance(value, str):
        if not value.strip():
            raise ConfigError("credentials: an empty block name")
        return CuratorCredentials.load(value)
    return None


def resolve_credentials(value: CredentialsLike) -> Credentials:
    """One :class:`~curator_flows.credentials.Credentials` for a step call."""
    block = load_block(value)
    if block is not None:
        return block.to_credentials()
    if value is None or isinstance(value, Credentials | dict):
        return Credentials.coerce(value)
    raise ConfigError(
        "credentials must be a CuratorCredentials block, a saved block's name, "
        f"a Credentials or a dict, got {type(value).__name__}"
    )
