"""``make airflow-ui``: a local Airflow with the example DAGs and this provider, a simulator, and a
``curator_default`` connection to it, on this machine only.

Components, each started here (not with ``airflow standalone``, whose API server and log
servers listen on every interface): the API server + UI, the scheduler (LocalExecutor), the DAG
processor, the triggerer, and two log servers (the workers' and the triggerer's live task logs,
Airflow's own app) - every one bound to 127.0.0.1 - plus the simulator, also on 127.0.0.1.
Airflow's state (SQLite), logs and the example datasets live in ``$AIRFLOW_UI_HOME``
(``./.airflow``).

Ports: ``AIRFLOW_UI_PORT`` (UI and API; default 8080 when free), ``CURATOR_SIM_PORT`` (the
simulator; default 8765 when free), ``AIRFLOW_WORKER_LOG_PORT`` and ``AIRFLOW_TRIGGER_LOG_PORT``
(the log servers): a port set in the environment is used, or refused when taken; an unset one
is picked free, so a second local Airflow does not collide with this one.

The login is ``admin`` with a random password generated into
``$AIRFLOW_UI_HOME/simple_auth_manager_passwords.json.generated`` on the first start (printed at
every start).

It stops on SIGINT (Ctrl-C) and SIGTERM alike, also when started with SIGINT ignored (``&`` in a
script): every component runs in a process group of its own, and each whole group gets
SIGTERM, then SIGKILL after a grace period, so no scheduler, API server, triggerer, task or log
server is left behind. A component that dies (a triggerer, say) is restarted.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LOCAL = "127.0.0.1"
STOP_GRACE = 20.0
READY_TIMEOUT = 240.0
MAX_RESTARTS = 5
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
#: the simulator's batches: minutes in a real provider, seconds here
SIM_BATCH_TIMINGS = "validating=2,in_progress=20,finalizing=2"
#: an Airflow log server (the app ``airflow scheduler`` / ``airflow triggerer`` would start on
#: every interface), on the loopback interface
LOG_SERVER = (
    "import sys, uvicorn; "
    "uvicorn.run('airflow.utils.serve_logs.log_server:get_app', factory=True, "
    "host=sys.argv[1], port=int(sys.argv[2]), log_config=None, access_log=False)"
)


def loopback_hostname() -> str:
    """``[core] hostname_callable`` of this Airflow: task instances and triggerer jobs record
    127.0.0.1, where the API server finds their (loopback-only) log servers."""
    return LOCAL


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOCAL, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCAL, 0))
        return sock.getsockname()[1]


def pick_port(variable: str, preferred: int | None = None) -> int:
    """The port in ``$variable`` (refused when taken), else ``preferred`` when free, else a
    free one."""
    value = os.environ.get(variable)
    if value:
        port = int(value)
        if not port_is_free(port):
            raise SystemExit(f"[airflow-ui] {variable}={port} is already in use on {LOCAL}")
        return port
    if preferred is not None and port_is_free(preferred):
        return preferred
    return free_port()


def admin_password(home: Path) -> str:
    """The admin password of this Airflow's simple auth manager (generated on first use; the
    fixed ``admin`` password of earlier versions is replaced)."""
    path = home / PASSWORD_FILE
    try:
        password = json.loads(path.read_text()).get("admin")
    except (OSError, ValueError, AttributeError):
        password = None
    if not password or password == "admin":
        password = secrets.token_urlsafe(12)
        path.write_text(json.dumps({"admin": password}))
        path.chmod(0o600)
    return password


class Stack:
    """The started components: each a process group of its own, its output relayed with its
    name in front."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.commands: dict[str, list[str]] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}
        self.stopping = False

    def start(self, name: str, command: list[str]) -> None:
        self.commands[name] = command
        process = subprocess.Popen(
            command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
        self.processes[name] = process
        threading.Thread(target=self._relay, args=(name, process), daemon=True).start()

    def _relay(self, name: str, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                print(f"{name:<15}| {text}", flush=True)

    def check(self) -> None:
        """Restart a component that died (at most :data:`MAX_RESTARTS` times each)."""
        for name, process in list(self.processes.items()):
            code = process.poll()
            if code is None or self.stopping:
                continue
            count = self.restarts.get(name, 0) + 1
            if count > MAX_RESTARTS:
                raise SystemExit(f"[airflow-ui] {name} keeps exiting (code {code}): stopping")
            self.restarts[name] = count
            print(f"[airflow-ui] {name} exited with code {code}: restarting it", flush=True)
            _signal_group(process.pid, signal.SIGKILL)  # what it left of its process group
            self.start(name, self.commands[name])

    def stop(self) -> None:
        """SIGTERM to every component's process group and to the groups of their descendants
        (a task process runs in a group of its own), SIGKILL to what is left after
        :data:`STOP_GRACE` seconds."""
        self.stopping = True
        groups = {process.pid for process in self.processes.values()}
        groups |= descendant_groups(os.getpid())
        for group in groups:
            _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
            for process in self.processes.values():
                process.poll()  # reap what ended
            time.sleep(0.2)
        groups |= descendant_groups(os.getpid())
        for group in groups:
            _signal_group(group, signal.SIGKILL)
        for process in self.processes.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def descendant_groups(root: int) -> set[int]:
    """The process groups of ``root``'s descendants (``ps``: Linux and macOS), except
    ``root``'s own."""
    listing = subprocess.run(
        ["ps", "-A", "-o", "pid=,ppid=,pgid="], capture_output=True, text=True, check=False
    ).stdout
    children: dict[int, list[tuple[int, int]]] = {}
    for line in listing.splitlines():
        try:
            pid, ppid, pgid = (int(field) for field in line.split())
        except ValueError:
            continue
        children.setdefault(ppid, []).append((pid, pgid))
    groups, todo = set(), [root]
    while todo:
        for pid, pgid in children.get(todo.pop(), []):
            groups.add(pgid)
            todo.append(pid)
    groups.discard(os.getpgid(root))
    return groups


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Stop(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived."""


def _on_signal(signum: int, frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def wait_ready(url: str, stack: Stack, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.check()
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                url, timeout=2
            ) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"[airflow-ui] the API server did not answer at {url} in {timeout:.0f}s")


def main() -> int:
    # SIGINT too: a shell script's `&` starts us with SIGINT ignored, which Python keeps
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    home = Path(os.environ.get("AIRFLOW_UI_HOME") or REPO / ".airflow").resolve()
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    ui_port = pick_port("AIRFLOW_UI_PORT", 8080)
    sim_port = pick_port("CURATOR_SIM_PORT", 8765)
    worker_log_port = pick_port("AIRFLOW_WORKER_LOG_PORT")
    trigger_log_port = pick_port("AIRFLOW_TRIGGER_LOG_PORT")
    ui_url = f"http://{LOCAL}:{ui_port}"
    sim_url = f"http://{LOCAL}:{sim_port}/v1"
    pythonpath = os.pathsep.join(p for p in (str(SCRIPTS), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        "PYTHONPATH": pythonpath,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags_examples"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": os.environ.get("AIRFLOW__CORE__PARALLELISM", "8"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airflow_ui.loopback_hostname",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{ui_url}/execution/",
        "AIRFLOW__API__HOST": LOCAL,
        "AIRFLOW__API__PORT": str(ui_port),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_log_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
        "AIRFLOW__OPENLINEAGE__DISABLED": "True",
        "CURATOR_EXAMPLES_ROOT": str(data),
        "CURATOR_EXAMPLES_POKE_SECONDS": os.environ.get("CURATOR_EXAMPLES_POKE_SECONDS", "60"),
    }
    airflow = str(BIN / "airflow")
    stack = Stack(env)
    try:
        print(f"[airflow-ui] simulator on {sim_url}", flush=True)
        stack.start(
            "simulator",
            [str(BIN / "curator-flows"), "simulator", "--host", LOCAL, "--port", str(sim_port),
             "--latency", "0.05", "--rpm", "6000", "--batch-timings", SIM_BATCH_TIMINGS],
        )  # fmt: skip
        password = admin_password(home)

        def setup(*args: str) -> None:
            subprocess.run([airflow, *args], env=env, check=True, stdout=subprocess.DEVNULL)

        setup("db", "migrate")
        subprocess.run(
            [airflow, "connections", "delete", "curator_default"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        setup(
            "connections", "add", "curator_default", "--conn-type", "curator",
            "--conn-host", sim_url, "--conn-password", "simulator",
            "--conn-extra", json.dumps({"provider": "openai"}),
        )  # fmt: skip
        setup("pools", "set", "gpu", "1", "GPU slots (CuratorVLLMOperator's default pool)")
        python = sys.executable
        stack.start("api-server", [airflow, "api-server", "--host", LOCAL, "--port", str(ui_port)])
        stack.start("scheduler", [airflow, "scheduler", "--skip-serve-logs"])
        stack.start("dag-processor", [airflow, "dag-processor"])
        stack.start("triggerer", [airflow, "triggerer", "--skip-serve-logs"])
        stack.start("worker-logs", [python, "-c", LOG_SERVER, LOCAL, str(worker_log_port)])
        stack.start("triggerer-logs", [python, "-c", LOG_SERVER, LOCAL, str(trigger_log_port)])
        wait_ready(f"{ui_url}/api/v2/monitor/health", stack)
        print(
            f"\n[airflow-ui] Airflow UI: {ui_url}  (user admin, password {password})\n"
            f"[airflow-ui] local only: every component listens on {LOCAL} (UI/API {ui_port}, "
            f"simulator {sim_port}, log servers {worker_log_port} and {trigger_log_port})\n"
            f"[airflow-ui] curator_default -> the simulator; datasets land in {data}\n"
            "[airflow-ui] Ctrl-C (or SIGTERM) stops everything\n",
            flush=True,
        )
        while True:
            stack.check()
            time.sleep(1.0)
    except (Stop, KeyboardInterrupt) as stop:
        print(f"[airflow-ui] stopping ({stop or 'SIGINT'})", flush=True)
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second signal does not cut the stop short
        stack.stop()
        print("[airflow-ui] stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
