"""Configuration mistakes fail at construction (or, for a storage location, at the first step,
before any row is read or request sent) with a permanent ``ConfigError`` naming what is wrong,
never later as a retryable error."""

from __future__ import annotations

import time

import pytest

from curator_flows import LLM, ConfigError, Credentials, steps
from curator_flows import credentials as credentials_module
from curator_flows.credentials import check_storage_credentials
from curator_flows.errors import is_retryable


@pytest.mark.parametrize(
    ("backend_params", "message"),
    [
        ({"base_url": "localhost:8000/v1"}, "base_url='localhost:8000/v1' is not an http"),
        ({"base_url": "api.openai.com/v1"}, "not an http"),
        ({"base_url": "ftp://example.com/v1"}, "not an http"),
        ({"base_url": "https://"}, "not an http"),
        ({"max_retries": True}, "max_retries: .*not the boolean True"),
        ({"shard_size": False}, "shard_size: .*not the boolean"),
        ({"max_cost": True}, "max_cost: .*not the boolean"),
        ({"request_timeout": float("inf")}, "request_timeout: .*finite"),
        ({"max_cost": float("nan")}, "max_cost: .*finite"),
        ({"seconds_to_pause_on_rate_limit": float("inf")}, "finite"),
    ],
)
def test_backend_params_mistakes_fail_at_construction(backend_params, message):
    with pytest.raises(ConfigError, match=message) as error:
        LLM("gpt-4o-mini", backend_params=backend_params)
    assert not is_retryable(error.value)


@pytest.mark.parametrize(
    ("backend", "params", "message"),
    [
        ("openai", {"temperature": -3}, r"temperature'\]=-3 is out of range.*between 0 and 2"),
        ("openai", {"temperature": 2.5}, "between 0 and 2"),
        ("openai", {"top_p": 1.5}, "between 0 and 1"),
        ("openai", {"presence_penalty": -2.5}, "between -2 and 2"),
        ("openai", {"max_tokens": 0}, "at least 1"),
        ("openai", {"temperature": float("inf")}, "finite"),
        ("anthropic", {"temperature": 1.5}, "between 0 and 1"),
        ("anthropic", {"top_k": -1}, "at least 0"),
        ("litellm", {"temperature": -0.1}, "at least 0"),
        ("litellm", {"top_p": float("nan")}, "finite"),
    ],
)
def test_generation_params_out_of_range_fail_at_construction(backend, params, message):
    model = "claude-3-5-haiku-20241022" if backend == "anthropic" else "gpt-4o-mini"
    with pytest.raises(ConfigError, match=message):
        LLM(model, backend=backend, generation_params=params)


def test_sound_values_and_server_specific_ranges_are_accepted():
    LLM("gpt-4o-mini", backend_params={"max_retries": 0, "request_timeout": 5})
    LLM("gpt-4o-mini", generation_params={"temperature": 0, "top_p": 1, "max_tokens": 1})
    # an OpenAI-compatible server may sample hotter than OpenAI allows, and vLLM's top_k=-1
    LLM(
        "my-model",
        backend="openai",
        generation_params={"temperature": 3.0, "top_k": -1},
        backend_params={"base_url": "http://localhost:8000/v1"},
    )


def test_a_base_url_without_a_scheme_in_credentials_or_the_environment_is_named(
    monkeypatch, sim, params, wd
):
    with pytest.raises(ConfigError, match="Credentials.base_url='localhost:1/v1'"):
        Credentials(base_url="localhost:1/v1")
    llm = LLM("gpt-4o-mini", backend_params={"api_key": "k", "progress": "off"})
    monkeypatch.setenv("OPENAI_BASE_URL", "127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL='127.0.0.1:9/v1'"):
        llm(["hello"], working_dir=wd)
    assert sim.stats()["requests"] == 0


# ----------------------------------------------------------------------------- gs:// credentials
@pytest.fixture
def no_google_credentials(monkeypatch, tmp_path):
    """A machine with no Google credentials of any kind (and not a Google Cloud VM)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "CLOUDSDK_CONFIG",
        "GCE_METADATA_HOST",
        "GCE_METADATA_ROOT",
        "GCE_METADATA_IP",
        "K_SERVICE",
        "CLOUD_RUN_JOB",
        "FUNCTION_TARGET",
        "GAE_ENV",
        "GAE_APPLICATION",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(credentials_module, "GCE_PRODUCT_NAME_FILE", str(tmp_path / "no-dmi"))
    return tmp_path


def test_gs_without_google_credentials_fails_at_once_saying_which_are_missing(
    no_google_credentials, sim, params, wd
):
    llm = LLM("gpt-4o-mini", backend_params=params())
    started = time.monotonic()
    calls = {
        "working_dir": lambda: llm(["hello"], working_dir="gs://no-such-bucket/runs"),
        "dataset": lambda: steps.prepare(llm, "gs://no-such-bucket/rows.parquet", wd),
        "run": lambda: steps.status("gs://no-such-bucket/runs/abc"),
    }
    for name, call in calls.items():
        with pytest.raises(ConfigError) as error:
            call()
        message = str(error.value)
        assert "GOOGLE_APPLICATION_CREDENTIALS is not set" in message, name
        assert "application_default_credentials.json" in message and "token" in message, name
        assert not is_retryable(error.value)
    run = steps.prepare(llm, ["hello"], wd)
    steps.run_online(run, llm=llm)
    with pytest.raises(ConfigError, match="gs://no-such-bucket/out"):
        steps.finalize(run, llm=llm, output_uri="gs://no-such-bucket/out")
    assert time.monotonic() - started < 20  # gcsfs alone spends ~50 s probing, then fails on DNS
    assert sim.stats()["requests"] == 1  # only the local run's request


def test_any_usable_google_credentials_pass_the_check(no_google_credentials, monkeypatch):
    uri = "gs://bucket/runs"
    with pytest.raises(ConfigError):
        check_storage_credentials(uri)
    check_storage_credentials(uri, {"token": "anon"})  # the caller chose
    check_storage_credentials("s3://bucket/runs")  # not Google's
    key = no_google_credentials / "key.json"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    with pytest.raises(ConfigError, match="GOOGLE_APPLICATION_CREDENTIALS points at .*key.json"):
        check_storage_credentials(uri)
    key.write_text("{}")
    check_storage_credentials(uri)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    adc = no_google_credentials / "home" / ".config" / "gcloud"
    adc.mkdir(parents=True)
    (adc / "application_default_credentials.json").write_text("{}")
    check_storage_credentials(uri)
    (adc / "application_default_credentials.json").unlink()
    monkeypatch.setenv("K_SERVICE", "nightly-build")  # Cloud Run: the metadata server answers
    check_storage_credentials(uri)
