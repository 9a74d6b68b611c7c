"""What a flow run's parameters look like on the Prefect server (no key, no dataset), and
``import prefect_tasks`` staying light."""

from __future__ import annotations

import json
import subprocess
import sys

from flow_llms import Numbered

from curator_flows import Credentials

KEY = "sk-parameters-test-secret"


def test_the_stored_parameters_hold_no_key_and_no_dataset():
    from prefect_tasks import CuratorCredentials, curate

    llm = Numbered("gpt-4o-mini", backend_params={"api_key": KEY, "max_tokens": 64})
    stored = curate.serialize_parameters(
        {
            "llm": llm,
            "dataset": [{"n": i} for i in range(1000)],
            "credentials": {"api_key": KEY, "base_url": "http://x/v1"},
            "llm_kwargs": {"backend_params": {"api_key": KEY, "max_tokens": 64}},
            "run_key": "2026-11-27",
        }
    )
    assert KEY not in json.dumps(stored)
    assert stored["llm"] == {
        "llm": "flow_llms:Numbered", "model_name": "gpt-4o-mini", "backend": "openai",
        "mode": "online",
    }  # fmt: skip
    assert stored["dataset"] == "<list of 1000 rows: not stored with the flow run>"
    assert stored["llm_kwargs"]["backend_params"]["max_tokens"] == 64  # not a secret
    assert stored["run_key"] == "2026-11-27"
    for credentials in (
        Credentials(api_key=KEY),
        CuratorCredentials(api_key=KEY),
        {"api_key": KEY, "storage_options": {"secret": KEY}},
    ):
        assert KEY not in json.dumps(curate.serialize_parameters({"credentials": credentials}))
    small = curate.serialize_parameters({"dataset": [{"n": 1}], "credentials": "openai-prod"})
    assert small == {"dataset": [{"n": 1}], "credentials": "openai-prod"}
    upstream = {"run_uri": "/runs/abc", "output_uri": "/out/abc", "statistics": {}}
    assert curate.serialize_parameters({"dataset": upstream})["dataset"] == {
        "run_uri": "/runs/abc", "output_uri": "/out/abc",
    }  # fmt: skip


def test_a_flow_copy_keeps_the_public_parameters():
    from prefect.task_runners import ThreadPoolTaskRunner

    from prefect_tasks import curate

    wide = curate.with_options(task_runner=ThreadPoolTaskRunner(max_workers=8))
    assert type(wide) is type(curate) and wide.task_runner._max_workers == 8
    stored = wide.serialize_parameters({"llm": Numbered("gpt-4o-mini")})
    assert stored["llm"]["llm"] == "flow_llms:Numbered"


def test_importing_prefect_tasks_imports_neither_prefect_nor_the_engine():
    code = (
        "import sys, prefect_tasks\n"
        "heavy = [m for m in ('prefect', 'curator_flows.steps', 'pydantic') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
