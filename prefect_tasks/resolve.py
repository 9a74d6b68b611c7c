"""Turning what a flow or task is given into what a step takes: an ``LLM`` (an instance, or an
import path with constructor arguments) and one :class:`~curator_flows.credentials.Credentials`
value (a ``CuratorCredentials`` block, a saved block's name, ``Credentials`` or a dict of its
fields).

Invariant: credentials are resolved per call and handed to the step; nothing here returns,
logs or stores the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from curator_flows.credentials import Credentials
from curator_flows.errors import ConfigError
from curator_flows.llm import LLM
from curator_flows.rebuild import load_import_path

if TYPE_CHECKING:
    from .credentials import CuratorCredentials

CredentialsLike = Any  # CuratorCredentials | str (a block name) | Credentials | dict | None


def resolve_llm(llm: Any, llm_kwargs: dict[str, Any] | None = None) -> LLM:
    """``llm`` as an :class:`~curator_flows.llm.LLM`: an instance as is; an import path
    (``"package.module:Class"`` or ``"package.module.Class"``) of an ``LLM`` subclass is called
    with ``llm_kwargs``; a path to an instance is used as is."""
    if isinstance(llm, LLM):
        if llm_kwargs:
            raise ConfigError("llm_kwargs are only for an import path, not an LLM instance")
        return llm
    if not isinstance(llm, str) or not llm.strip():
        raise ConfigError(
            f"llm must be an LLM instance or an import path such as "
            f"'my_project.generators:RecipeGenerator', got {type(llm).__name__}"
        )
    path = llm.strip()
    if ":" not in path:
        module, _, name = path.rpartition(".")
        path = f"{module}:{name}"
    try:
        target = load_import_path(path)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"cannot import the LLM {llm!r}: {exc}") from None
    if isinstance(target, LLM):
        if llm_kwargs:
            raise ConfigError(f"{llm!r} is an LLM instance: it takes no llm_kwargs")
        return target
    if not (isinstance(target, type) and issubclass(target, LLM)):
        raise ConfigError(f"{llm!r} is not an LLM subclass or instance")
    kwargs = dict(llm_kwargs or {})
    if "model_name" not in kwargs:
        raise ConfigError(f"llm_kwargs for {llm!r} need a 'model_name'")
    return target(**kwargs)


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
