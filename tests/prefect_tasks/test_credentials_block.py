"""The ``CuratorCredentials`` block: saved and loaded without showing its key, registered from
the CLI, and used by a flow whose results, cache, logs, artifacts, parameters and run directory
never contain the key (the simulator refuses every other key, so the key did reach it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import prefect_api as api
import pytest
from flow_llms import Numbered

from curator_flows.errors import ConfigError
from curator_flows.testing.simulator import Simulator

KEY = "sk-curator-test-0123456789-secret"


def test_the_block_saves_and_loads_without_exposing_the_key(prefect_server):
    from prefect_tasks import CuratorCredentials

    block = CuratorCredentials(
        api_key=KEY, base_url="http://127.0.0.1:1/v1", storage_options={"key": "s3-secret"}
    )
    block.save("roundtrip", overwrite=True)
    loaded = CuratorCredentials.load("roundtrip")
    assert loaded.api_key.get_secret_value() == KEY and loaded.provider == "openai"
    creds = loaded.to_credentials()
    assert creds.secret() == KEY and creds.storage_options == {"key": "s3-secret"}
    assert creds.base_url == "http://127.0.0.1:1/v1"
    assert not hasattr(loaded, "backend_params")  # no way to the raw key but credentials=
    for shown in (repr(loaded), str(loaded), loaded.model_dump_json(), repr(creds)):
        assert KEY not in shown and "s3-secret" not in shown
    with api.client() as client:  # what the API hands out without include_secrets
        document = client.read_block_document_by_name(
            "roundtrip", "curator-credentials", include_secrets=False
        )
    assert KEY not in json.dumps(document.data, default=str)


def test_the_block_type_registers_with_the_prefect_cli(prefect_env):
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "prefect_tasks"],
        env=prefect_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Curator Credentials" in done.stdout
    with api.client() as client:
        assert client.read_block_type_by_slug("curator-credentials").name == "Curator Credentials"


def test_a_block_of_another_provider_is_refused_before_anything_is_sent(prefect_server, sim, wd):
    from prefect_tasks import CuratorCredentials, curate

    CuratorCredentials(provider="anthropic", api_key=KEY).save("anthropic-key", overwrite=True)
    llm = Numbered("gpt-4o-mini", backend_params={"base_url": sim.base_url, "progress": "off"})
    with pytest.raises(ConfigError, match="anthropic"):
        curate(llm, [{"n": 1}], wd, credentials="anthropic-key")
    assert sim.stats()["requests"] == 0


def _files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_the_key_reaches_the_provider_and_nothing_else(prefect_server, wd, storage_dir):
    from prefect_tasks import CuratorCredentials, curate

    with Simulator(require_api_key=KEY) as sim:
        CuratorCredentials(api_key=KEY, base_url=sim.base_url).save("sim-key", overwrite=True)
        llm = Numbered("gpt-4o-mini", backend_params={"progress": "log", "shard_size": 5})
        rows = [{"n": i} for i in range(12)] + [{"n": 99, "marker": "[[sim:500x1]]"}]
        by_block = curate(llm, rows, wd, credentials="sim-key", return_state=True)
        # the other way in: a key inside the LLM's backend_params (masked in the parameters)
        llm_with_key = Numbered(
            "gpt-4o-mini",
            backend_params={"api_key": KEY, "base_url": sim.base_url, "progress": "off"},
        )
        by_params = curate(llm_with_key, [{"n": i} for i in range(100, 103)], wd, return_state=True)
        assert sim.stats()["status_counts"]["200"] == 13 + 3  # the key reached the provider
    assert by_block.result()["rows"] == 13 and by_params.result()["rows"] == 3

    runs = [api.flow_run_id(by_block), api.flow_run_id(by_params)]
    logs = api.logs(*runs)
    engine_lines = [line for line in logs if line.name.startswith("curator_flows")]
    assert any("done=" in line.message for line in engine_lines)  # progress lines arrive
    seen = {
        "logs": [line.message for line in logs],
        "artifacts": [(a.key, a.description, a.data) for a in api.artifacts(*runs)],
        "parameters": [api.flow_run(r).parameters for r in runs],
        "task results": [
            t.state.result() for t in api.task_runs(*runs) if t.name.startswith("run_online")
        ],
        "flow results": [by_block.result(), by_params.result()],
        "task names": [t.name for t in api.task_runs(*runs)],
    }
    for what, value in seen.items():
        assert KEY not in json.dumps(value, default=str), what
    assert api.flow_run(runs[1]).parameters["llm"]["model_name"] == "gpt-4o-mini"
    assert _files_containing(storage_dir, KEY.encode()) == []  # results and the task cache
    assert _files_containing(Path(wd), KEY.encode()) == []  # the run directory
    persisted = [p for p in storage_dir.rglob("curator-run-online-*") if p.is_file()]
    assert persisted and all(json.loads(p.read_bytes()) for p in persisted)  # JSON, not pickle


def test_the_block_hands_out_credentials_an_endpoint_and_clients(prefect_server, monkeypatch):
    """``get_credentials`` / ``get_endpoint`` / ``get_client`` / ``get_filesystem``, shaped like
    prefect-aws's ``AwsCredentials`` accessors; the SDK client really calls the endpoint."""
    from prefect.blocks.abstract import CredentialsBlock

    from curator_flows.errors import MissingAPIKeyError
    from prefect_tasks import CuratorCredentials

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with Simulator(require_api_key=KEY) as sim:
        CuratorCredentials(
            api_key=KEY, base_url=sim.base_url, storage_options={"auto_mkdir": True}
        ).save("accessors", overwrite=True)
        block = CuratorCredentials.load("accessors")
        assert isinstance(block, CredentialsBlock)
        creds = block.get_credentials()
        assert creds.secret() == KEY and creds.base_url == sim.base_url
        endpoint = block.get_endpoint()
        assert (endpoint.base_url, endpoint.api_key) == (sim.base_url.rstrip("/"), KEY)
        client = block.get_client(timeout=30)
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "name a dish"}]
        )
        assert answer.choices[0].message.content and sim.stats()["status_counts"] == {"200": 1}
    assert block.get_filesystem("file:///tmp").auto_mkdir is True  # the storage options
    default = CuratorCredentials(api_key=KEY).get_endpoint()
    assert default.base_url == "https://api.openai.com/v1"
    with pytest.raises(MissingAPIKeyError):
        CuratorCredentials().get_endpoint()
    with pytest.raises(ConfigError, match="anthropic"):  # an OpenAI key never goes there
        block.get_client("anthropic")
    with pytest.raises(ConfigError, match="client_type"):
        CuratorCredentials(provider="litellm").get_client()
