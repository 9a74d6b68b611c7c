"""Credentials helpers shared by the orchestrator adapters."""

from __future__ import annotations

import pytest

from curator_flows.credentials import check_provider
from curator_flows.errors import ConfigError


def test_check_provider_refuses_the_other_direct_providers_key():
    with pytest.raises(ConfigError, match="connection 'c' is for provider 'anthropic'") as caught:
        check_provider("openai", "anthropic", source="connection 'c'", remedy="use another")
    assert "backend is 'openai': use another" in str(caught.value)
    for backend, provider in [
        ("openai", "openai"),
        ("openai", None),
        ("openai", "litellm"),  # a litellm proxy takes any model
        ("litellm", "anthropic"),
        ("vllm", "openai"),
        ("klusterai", "anthropic"),  # OpenAI-compatible providers are not checked
    ]:
        check_provider(backend, provider, source="s", remedy="r")
