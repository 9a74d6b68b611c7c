"""Rebuilding a run's LLM in another process from the manifest: constructor arguments are
recorded (never secrets); what cannot be rebuilt fails at prepare, saying to pass llm=."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curator_flows import LLMRebuildError, steps

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from ctor_llms import Handle, SetsStateOutsideTheConstructor, Styled, WithHandle  # noqa: E402


def _in_fresh_process(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "OPENAI_API_KEY": "k"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_constructor_arguments_rebuild_the_llm_in_another_process(sim, wd):
    llm = Styled(
        "gpt-4o-mini",
        "poems",
        column="poem",
        backend_params={"base_url": sim.base_url, "api_key": "sk-secret-key", "progress": "off"},
    )
    run = steps.prepare(llm, [{"n": i} for i in range(5)], wd)
    manifest = Path(run["run_uri"], "manifest.json").read_text()
    assert "sk-secret-key" not in manifest
    recorded = json.loads(manifest)["llm"]  # positional arguments are recorded by name
    assert (
        recorded["kwargs"]["model_name"] == "gpt-4o-mini" and recorded["kwargs"]["topic"] == "poems"
    )
    out = _in_fresh_process(
        "import json; from curator_flows import steps\n"
        f"steps.run_online({run['run_uri']!r})\n"
        f"steps.finalize({run['run_uri']!r})\n"
        f"d = steps.load_response({run['run_uri']!r}).dataset\n"
        "print(json.dumps({'columns': d.column_names, 'topic': d['topic'][0]}))\n"
    )
    assert "poem" in out["columns"] and out["topic"] == "poems"  # not the defaults
    assert set(sim.stats()["by_prompt"]) == {f"poems: number {i}" for i in range(5)}


def test_arguments_that_cannot_be_stored_fail_at_prepare(wd):
    llm = WithHandle("gpt-4o-mini", Handle(), backend_params={"api_key": "k"})
    with pytest.raises(LLMRebuildError, match="pass llm= to the step") as err:
        steps.prepare(llm, [{"n": 1}], wd)
    assert "not JSON-serialisable" in str(err.value) and not err.value.retryable
    # a caller that passes llm= to every step can say so
    run = steps.prepare(llm, [{"n": 1}], wd, rebuild_check=False)
    with pytest.raises(LLMRebuildError):
        steps.estimate(run)  # needs the LLM, got none: the same clear error
    assert steps.estimate(run, llm=llm)["pending"] == 1


def test_state_set_outside_the_constructor_fails_at_prepare(wd):
    llm = SetsStateOutsideTheConstructor("gpt-4o-mini", backend_params={"api_key": "k"})
    llm.label = "set after construction"
    with pytest.raises(LLMRebuildError, match="label"):
        steps.prepare(llm, [{"n": 1}], wd)


def test_a_class_defined_in_a_function_fails_at_prepare(wd):
    class Local(Styled):
        pass

    with pytest.raises(LLMRebuildError, match="inside a function"):
        steps.prepare(Local("gpt-4o-mini", "t", backend_params={"api_key": "k"}), [{"n": 1}], wd)


def test_a_key_passed_positionally_or_by_name_never_reaches_the_manifest(wd):
    from curator_flows import LLM

    positional = LLM("gpt-4o-mini", None, False, None, None, {"api_key": "sk-positional-secret"})
    named = Styled("gpt-4o-mini", "t", backend_params={"api_key": "sk-named-secret"})
    for llm, rows in ((positional, ["hello"]), (named, [{"n": 1}])):
        run = steps.prepare(llm, rows, wd)
        manifest = Path(run["run_uri"], "manifest.json").read_text()
        assert "secret" not in manifest
    spec = json.loads(Path(run["run_uri"], "manifest.json").read_text())["llm"]
    assert spec["kwargs"]["topic"] == "t" and "api_key" not in spec["kwargs"]["backend_params"]
