"""``make airflow-ui`` (``scripts/airflow_ui.sh``): started in the background from a script (SIGINT
ignored, as ``&`` in a non-interactive shell does), every component listens on 127.0.0.1 only,
an example DAG triggered through the REST API without a logical date runs to success (its
templates key the night on ``run_date``), and SIGTERM leaves no process behind (API server,
scheduler and its workers, DAG processor, triggerer, log servers, simulator). The script
runs the development environment's Airflow (``.venv``) whichever environment runs this test, so
it runs once, in the main suite."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("airflow", reason="make airflow-ui needs the airflow extra")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "airflow_ui.sh"
LOOPBACK = ("0100007F", "00000000000000000000000001000000")  # 127.0.0.1, ::1 in /proc/net


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(opener, url: str) -> bool:
    try:
        with opener.open(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def api(opener, method: str, url: str, token: str | None = None, body: dict | None = None):
    """One REST call; its status and JSON body."""
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    try:
        with opener.open(request, timeout=20) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def trigger_without_logical_date(opener, base: str, home: Path, deadline: float) -> dict:
    """Log in, unpause ``curator_nightly_online``, trigger it with ``"logical_date": null``
    (what the REST API and `airflow dags trigger` create) and wait for the run to end."""
    passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
    login = {"username": "admin", "password": passwords["admin"]}
    token = api(opener, "POST", f"{base}/auth/token", None, login)[1]["access_token"]
    dag = f"{base}/api/v2/dags/curator_nightly_online"
    while api(opener, "GET", dag, token)[0] != 200:
        assert time.monotonic() < deadline, "the DAG processor never parsed the example"
        time.sleep(1)
    status, run = api(opener, "POST", f"{dag}/dagRuns", token, {"logical_date": None})
    assert status == 200 and run["logical_date"] is None, run
    assert api(opener, "PATCH", dag, token, {"is_paused": False})[0] == 200  # queued first
    while run["state"] not in ("success", "failed"):
        assert time.monotonic() < deadline, run
        time.sleep(2)
        run = api(opener, "GET", f"{dag}/dagRuns/{run['dag_run_id']}", token)[1]
    return run


def processes() -> dict[int, tuple[int, str]]:
    """``{pid: (parent pid, start time)}`` of every process (from /proc)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def descendants(root: int) -> dict[int, str]:
    """``{pid: start time}`` of ``root`` and every process below it."""
    table = processes()
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found[pid] = table[pid][1]
            todo.extend(child for child, (parent, _) in table.items() if parent == pid)
    return found


def listening(pids: set[int]) -> list[tuple[str, int]]:
    """``(address in /proc/net form, port)`` of every TCP socket ``pids`` listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                address, port = fields[1].split(":")
                found.append((address, int(port, 16)))
    return found


@pytest.mark.timeout(600)
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)")
def test_airflow_ui_listens_on_loopback_only_and_sigterm_leaves_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}  # a user's shell
    ui_port, sim_port = free_port(), free_port()
    env.update(
        AIRFLOW_UI_HOME=str(tmp_path / "home"),
        AIRFLOW_UI_PORT=str(ui_port),
        CURATOR_SIM_PORT=str(sim_port),
        AIRFLOW__CORE__PARALLELISM="2",
    )
    out = open(tmp_path / "out.log", "wb")  # noqa: SIM115 - closed below
    wrapper = subprocess.Popen(  # `&` in a script: SIGINT ignored
        ["bash", "-c", f'trap "" INT; exec bash {SCRIPT}'],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    seen: dict[int, str] = {}
    try:
        log = tmp_path / "out.log"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        url = f"http://127.0.0.1:{ui_port}/api/v2/monitor/health"
        deadline = time.monotonic() + 240
        while not answers(opener, url):
            assert wrapper.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(1)
        while len(listening(set(descendants(wrapper.pid)))) < 4 and time.monotonic() < deadline:
            time.sleep(0.5)  # the log servers may come up after the API server
        seen = descendants(wrapper.pid)
        sockets = listening(set(seen))
        ports = {port for _, port in sockets}
        assert {ui_port, sim_port} <= ports and len(ports) >= 4  # + the two log servers
        assert all(address in LOOPBACK for address, _ in sockets), sockets
        assert len(seen) >= 7  # wrapper, simulator, 4 Airflow components, 2 log servers
        while "Airflow UI:" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline + 30, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        text = log.read_text(errors="replace")
        assert f"http://127.0.0.1:{ui_port}" in text and "local only" in text
        assert "password admin" not in text  # a generated password, printed
        base, home = f"http://127.0.0.1:{ui_port}", tmp_path / "home"
        run = trigger_without_logical_date(opener, base, home, time.monotonic() + 240)
        assert run["state"] == "success", log.read_text(errors="replace")[-5000:]
        night = run["run_after"][:10]  # {{ run_date }}: the date of the run's run_after
        assert (home / "data" / "datasets" / "recipes" / f"date={night}" / "_SUCCESS").exists()
        seen.update(descendants(wrapper.pid))  # the task processes of the run
    finally:
        seen.update(descendants(wrapper.pid))
        os.kill(wrapper.pid, signal.SIGTERM)
        try:
            wrapper.wait(timeout=90)
        finally:
            out.close()
            deadline = time.monotonic() + 30
            while True:  # a process that is gone, or whose pid was reused, is not left
                table = processes()
                left = {p: t for p, t in seen.items() if table.get(p, (0, ""))[1] == t}
                if not left or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            for pid in left:  # never leave them to the next test
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert wrapper.returncode == 0
    assert left == {}, f"left behind: {left}"
