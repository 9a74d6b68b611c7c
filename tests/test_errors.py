"""One error module: every error says whether a retry can help, and steps raise nothing else."""

from __future__ import annotations

import pytest

from curator_flows import LLM, errors, steps
from curator_flows.errors import is_retryable


class Plain(LLM):
    def prompt(self, input: dict) -> str:
        return f"number {input['n']}"


TRANSIENT = [
    errors.RateLimitExhaustedError("x"),
    errors.DailyLimitError("x", retry_after=432.0),
    errors.ProviderError("x", status=503),
    errors.ProviderError("x", status=None),
    errors.EndpointUnreachableError("x"),
    errors.BatchNotEnded("x"),
    errors.LeaseHeldError("x"),
    errors.StorageWriteError("x"),
    TimeoutError("x"),
    ConnectionResetError("x"),
    OSError(5, "an object store answered 503"),
]
PERMANENT = [
    errors.ConfigError("x"),
    errors.InputError("x"),
    errors.AuthenticationError("x", status=401),
    errors.QuotaExceededError("x", status=429),
    errors.ProviderError("x", status=400),
    errors.BudgetExceededError("x", spent=1.0, budget=1.0),
    errors.LLMRebuildError("x"),
    errors.RunNotFoundError("x"),
    errors.CorruptRunError("x"),
    errors.StorageAccessError("x"),
    ValueError("a bug does not fix itself"),
    FileNotFoundError("gone"),
    PermissionError("denied"),
]


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_errors_are_retryable(exc):
    assert is_retryable(exc)


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: type(e).__name__)
def test_permanent_errors_are_not(exc):
    assert not is_retryable(exc)


def test_every_library_error_is_one_of_ours_and_serialises():
    for name in dir(errors):
        value = getattr(errors, name)
        if (
            isinstance(value, type)
            and issubclass(value, Exception)
            and value.__module__ == errors.__name__
        ):
            assert issubclass(value, errors.CuratorFlowsError), name
    described = errors.AuthenticationError("bad key", status=401).to_dict()
    assert described == {"type": "AuthenticationError", "message": "bad key", "retryable": False}


def test_steps_raise_library_errors_for_bad_calls(wd):
    llm = Plain("gpt-4o-mini", backend_params={"api_key": "k"})
    run = steps.prepare(llm, [{"n": 1}], wd)
    with pytest.raises(errors.UnknownShardError, match="unknown shard"):
        steps.run_online(run, "00009")
    with pytest.raises(errors.RunNotFoundError, match="no prepared run"):
        steps.run_online(f"{wd}/nope", "00000")
    with pytest.raises(errors.RunModeError, match="not batch"):
        steps.submit(run, "00000")
    with pytest.raises(errors.ConfigError, match="parallel_shards"):
        steps.run_online(run, parallel_shards=0)
    with pytest.raises(errors.InputError, match="run_key"):
        steps.prepare(llm, [{"n": 1}], wd, run_key=7)


#: what Bespoke Curator raises as ``ValueError`` (missing responses, an unusable prompt() or
#: parse() answer, an unstorable value): code that catches ValueError around llm(...) keeps
#: catching them, and code written against this library keeps catching RuntimeError
CURATOR_VALUE_ERRORS = [
    errors.IncompleteRunError("x"),
    errors.TooManyFailuresError(
        "x", failed=2, total=3, failures_by_reason={"http_500": 2}, max_failed_fraction=0.01
    ),
    errors.PromptError("x"),
    errors.ParseError("x"),
    errors.OutputError("x"),
]


@pytest.mark.parametrize("exc", CURATOR_VALUE_ERRORS, ids=lambda e: type(e).__name__)
def test_what_curator_raises_as_value_error_is_a_value_error_and_still_a_runtime_error(exc):
    assert isinstance(exc, ValueError) and isinstance(exc, RuntimeError)
    assert isinstance(exc, errors.CuratorFlowsError)


def test_a_left_out_curator_feature_is_a_permanent_config_error():
    exc = errors.NotSupportedError("curator_flows.types.Image is not supported")
    assert isinstance(exc, errors.ConfigError) and isinstance(exc, ValueError)
    assert not is_retryable(exc)
