"""The online step API: each step in its own process, from the run URI alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from curator_flows import steps

SUPPORT = Path(__file__).parent / "support"
sys.path.insert(0, str(SUPPORT))

from resume_llms import Numbered  # noqa: E402


def _step(code: str, env_extra: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), **(env_extra or {})}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_online_steps_in_separate_processes(sim, wd):
    llm = Numbered("gpt-4o-mini", backend_params={"base_url": sim.base_url, "shard_size": 10})
    run = steps.prepare(llm, [{"n": i} for i in range(35)], wd)
    assert run["shards"] == ["00000", "00001", "00002", "00003"]
    json.dumps(run)  # small and JSON-serialisable: what XCom or a Prefect result carries
    # The api key comes from the worker's environment, never from the run directory.
    for shard in reversed(run["shards"]):
        result = _step(
            "import json; from curator_flows import steps; "
            f"print(json.dumps(steps.run_online({run['run_uri']!r}, {shard!r})))",
            {"OPENAI_API_KEY": "worker-key"},
        )
        assert result["succeeded"] == (5 if shard == "00003" else 10)
    again = _step(
        "import json; from curator_flows import steps; "
        f"print(json.dumps(steps.run_online({run['run_uri']!r}, '00000')))"
    )
    assert again["sent"] == 0  # idempotent: nothing pending
    final = _step(
        "import json; from curator_flows import steps; "
        f"steps.finalize({run['run_uri']!r}); r = steps.load_response({run['run_uri']!r}); "
        "print(json.dumps({'rows': list(r.dataset['n']), 'ok': r.request_stats.succeeded}))"
    )
    assert final == {"rows": list(range(35)), "ok": 35}
    assert sim.stats()["chat_completions"] == 35


def test_unknown_shard_and_unprepared_run(wd):
    llm = Numbered("gpt-4o-mini")
    run = steps.prepare(llm, [{"n": 1}], wd)
    with pytest.raises(ValueError, match="unknown shard"):
        steps.run_online(run, "00009")
    with pytest.raises(FileNotFoundError, match="no prepared run"):
        steps.run_online(f"{wd}/nope", "00000")


def test_prepare_is_idempotent(wd):
    llm = Numbered("gpt-4o-mini")
    first = steps.prepare(llm, [{"n": i} for i in range(5)], wd)
    manifest = Path(first["run_uri"], "manifest.json").read_bytes()
    second = steps.prepare(llm, ({"n": i} for i in range(5)), wd)  # a generator works too
    assert {**first, "created": False} == second and first["created"]
    assert Path(first["run_uri"], "manifest.json").read_bytes() == manifest


def test_build_llm_from_an_import_path_over_backend_defaults():
    llm = steps.build_llm(
        "resume_llms.Numbered",
        {"model_name": "gpt-4o-mini", "backend_params": {"max_retries": 2}},
        backend_defaults={"base_url": "http://simulated/v1", "max_retries": 7},
    )
    assert isinstance(llm, Numbered)
    assert (llm.config.params.base_url, llm.config.params.max_retries) == (
        "http://simulated/v1",
        2,  # the LLM's own backend_params win over the defaults
    )
    assert steps.build_llm(llm) is llm


@pytest.mark.parametrize(
    ("llm", "kwargs", "problem"),
    [
        ("resume_llms:Nothing", {"model_name": "m"}, "cannot be imported"),
        ("json:dumps", {"model_name": "m"}, "not an LLM subclass"),
        ("resume_llms:Numbered", {}, "building llm="),
        (
            "resume_llms:Numbered",
            {"model_name": "m", "backend_params": {"api_key": "not-a-key"}},
            "hold backend_params\\['api_key'\\]",
        ),
        (42, None, "must be an LLM instance or an import path"),
    ],
)
def test_build_llm_refuses_with_a_configuration_error(llm, kwargs, problem):
    with pytest.raises(steps.CuratorFlowsError, match=problem) as caught:
        steps.build_llm(llm, kwargs)
    assert type(caught.value).__name__ == "ConfigError" and not caught.value.retryable
