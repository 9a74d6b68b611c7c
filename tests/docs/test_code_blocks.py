"""Every fenced ``python`` block of ``README.md`` and ``docs/`` is run (or parsed, or compiled,
as its marker says: see ``code_blocks.py`` and ``docs/contributing.md``), so the documentation
cannot drift from the code.

The world the examples assume is real: one simulator over real HTTP (``OPENAI_BASE_URL`` /
``ANTHROPIC_BASE_URL``), ``s3://bucket`` and ``s3://my-bucket`` on moto's S3 server (fsspec's
configuration, as a user points ``s3://`` elsewhere), a published cuisines dataset at
``s3://bucket/datasets/cuisines/2026-11-27``, and ``my_project.generators`` importable (the
example generators of ``dags_examples/generators.py``). Each program runs in a fresh subprocess
in an empty directory; the Prefect blocks share one temporary Prefect server, the DAG files one
``DagBag``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from code_blocks import REPO, Block, all_blocks, blocks_of, pages

BLOCKS = all_blocks()
RUN = [b for b in BLOCKS if b.kind == "run"]
PREFECT = [b for b in BLOCKS if b.kind == "prefect"]
DAGS = [b for b in BLOCKS if b.kind == "airflow-dag"]
#: seconds one program may take (a loaded 2-core machine; they take a few each)
TIMEOUT = 300
CUISINES = "s3://bucket/datasets/cuisines/2026-11-27"
SEED = f"""
from curator_flows import steps
from my_project.generators import CuisineGenerator

run = CuisineGenerator("gpt-4o-mini")(working_dir="s3://bucket/seed", run_key="2026-11-27")
steps.finalize(run, output_uri={CUISINES!r})
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory, s3_endpoint):
    """The environment every program runs in (see the module docstring); yields ``env``."""
    import s3fs

    from curator_flows.testing.simulator import Simulator

    root = tmp_path_factory.mktemp("docs-world")
    shim = root / "shim" / "my_project"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("")
    (shim / "generators.py").write_text(
        '"""The docs\' ``my_project.generators``: the example generators."""\n'
        "from dags_examples.generators import CuisineGenerator, Recipe, RecipeGenerator\n\n"
        '__all__ = ["CuisineGenerator", "Recipe", "RecipeGenerator"]\n'
    )
    fs = s3fs.S3FileSystem(
        endpoint_url=s3_endpoint, key="testing", secret="testing", client_kwargs={}
    )
    for bucket in ("bucket", "my-bucket"):
        if not fs.exists(bucket):
            fs.mkdir(bucket)
    with Simulator() as sim:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OPENAI_", "ANTHROPIC_", "CURATOR_", "PREFECT_", "AIRFLOW"))
        }
        env.update(
            PYTHONPATH=os.pathsep.join([str(shim.parent), str(REPO)]),
            OPENAI_BASE_URL=sim.base_url,
            OPENAI_API_KEY="sk-docs-test",
            ANTHROPIC_BASE_URL=sim.url,
            ANTHROPIC_API_KEY="sk-ant-docs-test",
            CURATOR_FLOWS_WORKING_DIR=str(root / "default-wd"),
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            FSSPEC_S3=json.dumps({"endpoint_url": s3_endpoint}),
            PREFECT_HOME=str(root / "prefect-home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
            DO_NOT_TRACK="1",
            AIRFLOW_HOME=str(root / "airflow-home"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
        )
        seeded = _python(SEED, env, root / "seed")
        assert seeded.returncode == 0, seeded.stderr[-3000:]
        yield env


def _python(code: str, env: dict[str, str], cwd: Path, name: str = "block.py"):
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / name).write_text(code)
    return subprocess.run(
        [sys.executable, name], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )


def _failure(block: Block, result: subprocess.CompletedProcess[str]) -> str:
    output = f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return f"{block.id} failed ({result.returncode}):\n{output}"


def test_every_page_parses_and_every_marker_is_known():
    for path in pages():
        blocks_of(path)  # raises on an unknown marker or a marker without its reason
    assert RUN and PREFECT and DAGS


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind != "skip"], ids=lambda b: b.id)
def test_block_compiles(block):
    compile(block.code, block.id, "exec")


@pytest.mark.parametrize("block", RUN, ids=lambda b: b.id)
def test_block_runs(block, world, tmp_path):
    result = _python(block.code, world, tmp_path)
    assert result.returncode == 0, _failure(block, result)


PREFECT_RUNNER = """
import json, sys, traceback
from prefect.testing.utilities import prefect_test_harness

programs = json.loads(open("programs.json").read())
failures = {}
with prefect_test_harness(server_startup_timeout=90):
    for name, code in programs.items():
        try:
            exec(compile(code, name, "exec"), {"__name__": "__main__"})
        except BaseException:
            failures[name] = traceback.format_exc()[-4000:]
print("RESULT " + json.dumps(failures))
"""


def test_prefect_blocks_run_on_a_temporary_prefect_server(world, tmp_path):
    """One temporary Prefect server for every ``prefect`` block, each block in a namespace of
    its own (a fresh interpreter each would start a server each)."""
    (tmp_path / "programs.json").write_text(json.dumps({b.id: b.code for b in PREFECT}))
    result = _python(PREFECT_RUNNER, world, tmp_path, "run_prefect_blocks.py")
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    failures = json.loads(line.removeprefix("RESULT "))
    assert failures == {}, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


DAG_PARSER = """
import json, os
from airflow.dag_processing.dagbag import DagBag

errors, files = {}, []
for name in sorted(os.listdir("dags")):  # one DagBag per file: the docs reuse DAG ids
    bag = DagBag(dag_folder=os.path.join("dags", name))
    errors.update({name: str(v)[-2000:] for v in bag.import_errors.values()})
    files += [name] if bag.dags else []
print("RESULT " + json.dumps({"errors": errors, "files": files}))
"""


def test_airflow_dag_files_parse(world, tmp_path):
    """Each ``airflow-dag`` block, as a file of a DAGs folder, parses as Airflow's DAG
    processor parses it: no import error, and at least one DAG from every file."""
    dags = tmp_path / "dags"
    dags.mkdir()
    names = {}
    for number, block in enumerate(DAGS):
        name = f"block_{number}.py"
        names[name] = block.id
        (dags / name).write_text(f"# {block.id}\n" + block.code)
    result = _python(DAG_PARSER, world, tmp_path, "parse_dags.py")
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    parsed = json.loads(line.removeprefix("RESULT "))
    errors = {names[k]: v for k, v in parsed["errors"].items()}
    assert errors == {}, textwrap.indent(json.dumps(errors, indent=1), "  ")
    assert parsed["files"] == sorted(names), "a DAG file block that defines no DAG"
