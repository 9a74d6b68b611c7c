"""The ``curator`` connection type and CuratorHook: registration, the form, credentials, a
cheap authenticated ``test_connection``, a missing connection, the embedded simulator."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
from airflow_env import TEST_KEY, airflow_cli, connection_json

from airflow_provider.compat import AirflowNotFoundException
from airflow_provider.hooks.curator import CuratorHook


def test_provider_registers_the_connection_type_and_its_form():
    from airflow.providers_manager import ProvidersManager
    from airflow_moved import airflow_at_least, task_runtime_hooks

    manager = ProvidersManager()
    assert "curator-flows" in manager.providers
    hook = task_runtime_hooks()["curator"]  # what Connection.get_hook uses
    assert hook.hook_class_name == "airflow_provider.hooks.curator.CuratorHook"
    assert hook.connection_type == "curator"
    if not airflow_at_least("3.2"):  # 3.1 reads no conn-fields, and its form needs FAB
        return
    widgets = manager.connection_form_widgets
    assert {"extra__curator__provider", "extra__curator__backend_params"} <= set(widgets)
    assert widgets["extra__curator__storage_options"].is_sensitive
    behaviour = manager.field_behaviours["curator"]
    assert {"schema", "port", "login"} <= set(behaviour["hidden_fields"])
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API key"}
    assert CuratorHook.get_ui_field_behaviour()["relabeling"] == behaviour["relabeling"]


def test_connection_becomes_credentials_and_backend_params(monkeypatch):
    extra = {
        "provider": "anthropic",
        "backend_params": json.dumps({"max_requests_per_minute": 50, "api_key": "dropped"}),
        "storage_options": {"endpoint_url": "http://127.0.0.1:9000"},
    }
    monkeypatch.setenv(
        "AIRFLOW_CONN_CURATOR_FORM",
        json.dumps(
            {"conn_type": "curator", "host": "https://llm.example/v1/", "password": "sk-abc12345"}
            | {"extra": extra}
        ),
    )
    hook = CuratorHook("curator_form")
    credentials = hook.get_conn()
    assert credentials.secret() == "sk-abc12345" and "sk-abc12345" not in repr(credentials)
    assert credentials.base_url == "https://llm.example/v1"
    assert credentials.storage_options == {"endpoint_url": "http://127.0.0.1:9000"}
    assert hook.provider() == "anthropic"
    assert hook.backend_params() == {"max_requests_per_minute": 50}


def test_test_connection_lists_models_with_the_key(fsim, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CURATOR_OK", connection_json(fsim))
    ok, message = CuratorHook("curator_ok").test_connection()
    assert ok and "models available" in message
    stats = fsim.stats()
    assert stats["requests"] == 1 and stats["status_counts"] == {"200": 1}  # one GET /models
    assert stats["chat_completions"] == 0 and stats["batches_created"] == 0  # nothing paid


class RefusingModels(http.server.BaseHTTPRequestHandler):
    """``GET /v1/models`` answering 401 the way OpenAI does (echoing part of the key). The
    simulator's models endpoint does not check keys, hence this stand-in."""

    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        RefusingModels.seen.append(key)
        body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}})
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def test_test_connection_reports_a_refused_key_without_showing_it(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RefusingModels)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        host = f"http://127.0.0.1:{server.server_address[1]}/v1"
        conn = {"conn_type": "curator", "host": host, "password": "sk-wrong-0123456"}
        monkeypatch.setenv("AIRFLOW_CONN_CURATOR_BAD", json.dumps(conn))
        ok, message = CuratorHook("curator_bad").test_connection()
    finally:
        server.shutdown()
    assert RefusingModels.seen == ["sk-wrong-0123456"]  # the key was sent, once
    assert not ok and "401" in message and "sk-wrong-0123456" not in message
    monkeypatch.setenv(
        "AIRFLOW_CONN_CURATOR_DOWN",
        json.dumps({"conn_type": "curator", "host": "http://127.0.0.1:9/v1", "password": "x"}),
    )
    ok, message = CuratorHook("curator_down").test_connection()
    assert not ok and "cannot reach" in message


def test_a_missing_connection_is_an_error_and_the_simulator_an_explicit_connection(monkeypatch):
    from airflow_provider.hooks.embedded import EMBEDDED_CONNECTION

    monkeypatch.setenv("AIRFLOW_CONN_CURATOR_DEFAULT", EMBEDDED_CONNECTION)
    with pytest.raises(AirflowNotFoundException) as missing:
        CuratorHook("curator_defualt").credentials()  # a typo never becomes the simulator
    message = str(missing.value)
    assert "'curator_defualt' does not exist" in message
    assert "defined in this environment: curator_default" in message
    hook = CuratorHook("curator_default")
    credentials = hook.credentials()
    assert hook.simulated and credentials.base_url.startswith("http://127.0.0.1:")
    again = CuratorHook("curator_default").credentials()
    assert again.base_url == credentials.base_url  # one embedded simulator per process
    ok, _ = CuratorHook("curator_default").test_connection()
    assert ok


def test_cli_lists_the_provider_adds_and_tests_a_curator_connection(fsim):
    fsim.configure(require_api_key=TEST_KEY)
    providers = airflow_cli("providers", "list", "-o", "json")
    assert any(p["package_name"] == "curator-flows" for p in json.loads(providers.stdout))
    airflow_cli(
        "connections", "add", "curator_cli", "--conn-type", "curator",
        "--conn-host", fsim.base_url, "--conn-password", TEST_KEY,
        "--conn-extra", json.dumps({"provider": "openai"}),
    )  # fmt: skip
    from airflow_moved import airflow_at_least

    if airflow_at_least("3.1.6"):  # before, the CLI's hook finds no connection of the database
        tested = airflow_cli("connections", "test", "curator_cli")
        assert "Connection success!" in tested.stdout, tested.stdout + tested.stderr
        assert TEST_KEY not in tested.stdout + tested.stderr
    airflow_cli("connections", "delete", "curator_cli")


def test_test_connection_against_the_simulator_requiring_a_key(monkeypatch):
    from curator_flows.testing.simulator import Simulator

    with Simulator(require_api_key="sk-the-right-one") as sim:
        for name, key, expected in (
            ("curator_ok", "sk-the-right-one", True),
            ("curator_no", "sk-x", False),
        ):
            conn = {"conn_type": "curator", "host": sim.base_url, "password": key}
            monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", json.dumps(conn))
            ok, message = CuratorHook(name).test_connection()
            assert ok is expected, message
        assert sim.stats()["status_counts"] == {"200": 1, "401": 1}
        assert sim.stats()["chat_completions"] == 0
