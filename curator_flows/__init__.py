"""curator-flows: Curator's LLM API as resumable steps for Airflow and Prefect.

Public names load lazily: ``import curator_flows`` imports no third-party library, so an
orchestrator task (a fresh process per step) starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_ERRORS = (
    "CuratorFlowsError", "ConfigError", "InputError", "PromptError", "ParseError",
    "IncompleteRunError", "ProviderError", "AuthenticationError", "EndpointUnreachableError",
    "RateLimitExhaustedError", "BudgetExceededError", "LeaseHeldError", "StorageWriteError",
    "RunNotFoundError", "LLMRebuildError", "BatchStepError", "BatchNotEnded",
    "QuotaExceededError", "DailyLimitError", "TooManyFailuresError", "NotSupportedError",
)  # fmt: skip
#: Curator's names for what this library leaves out: they raise NotSupportedError when used
_LEFT_OUT = (
    "CodeExecutor", "TinkerTrainer", "TinkerTrainerConfig", "FireworksTrainer",
    "FireworksTrainerConfig", "push_to_viewer", "load_dataset",
)  # fmt: skip
_EXPORTS = {
    "LLM": "curator_flows.llm",
    "CuratorResponse": "curator_flows.types",
    "TokenUsage": "curator_flows.types",
    "CostInfo": "curator_flows.types",
    "RequestStats": "curator_flows.types",
    "PerformanceStats": "curator_flows.types",
    "Credentials": "curator_flows.credentials",
    "is_retryable": "curator_flows.errors",
    **{name: "curator_flows.errors" for name in _ERRORS},
    **{name: "curator_flows.unsupported" for name in _LEFT_OUT},
    "steps": "curator_flows.steps",
    "types": "curator_flows.types",  # as Curator's ``curator.types`` (Image, File)
}
_MODULES = ("steps", "types")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'curator_flows' has no attribute {name!r}")
    value = importlib.import_module(module)
    if name not in _MODULES:
        value = getattr(value, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
