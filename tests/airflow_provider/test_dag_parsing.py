"""The example DAGs parse the way Airflow's DAG processor parses them: no import errors, and no
LLM client library (litellm, vllm, datasets, openai) imported at parse time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from airflow_env import REPO, SUPPORT

HEAVY = ("litellm", "vllm", "datasets", "openai")
PARSE = f"""
import json, sys
sys.path.insert(0, {str(SUPPORT)!r})
from airflow_moved import DagBag
bag = DagBag(dag_folder={str(REPO / "dags_examples")!r})
print(json.dumps({{
    "dags": sorted(bag.dag_ids),
    "errors": {{k: str(v)[-500:] for k, v in bag.import_errors.items()}},
    "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules),
}}))
"""


def test_example_dags_parse_without_llm_libraries():
    result = subprocess.run(
        [sys.executable, "-c", PARSE], capture_output=True, text=True, env=os.environ, timeout=120
    )
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert parsed["errors"] == {}
    assert parsed["dags"] == [
        "curator_nightly_batch",
        "curator_nightly_batch_steps",
        "curator_nightly_online",
        "curator_nightly_taskflow",
        "curator_vllm_gpu",
    ]
    assert parsed["heavy"] == []


def test_importing_the_provider_imports_neither_airflow_nor_the_engine():
    code = (
        "import sys, json, airflow_provider; "
        "print(json.dumps(sorted(m for m in ('airflow', 'curator_flows.steps', 'pydantic') "
        "if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert json.loads(result.stdout) == []
