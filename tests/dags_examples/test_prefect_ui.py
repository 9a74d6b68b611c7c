"""``make prefect-ui`` (``dags_examples/prefect_ui.py``) as a user runs it: in a terminal (a
pseudo-terminal) its first start asks nothing, the server comes up and a flow run of the served
deployment runs into the UI's own directories; Ctrl-C, or SIGTERM to a wrapper started from a
script with SIGINT ignored (also once the server is gone), stops every process it started.
Tested where ``make prefect-ui`` runs: the development environment (``.venv``)."""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import termios
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from curator_flows import steps
from curator_flows.testing.simulator import Simulator

pytest.importorskip("prefect", reason="make prefect-ui needs the prefect extra")

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ("How would you like to proceed", "Enter a new profile name", "Which profile")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wrapper_command(tmp_path: Path) -> tuple[list[str], str]:
    port = free_port()
    command = [
        sys.executable, "-m", "dags_examples.prefect_ui", "--port", str(port),
        "--sim-port", str(free_port()), "--output", str(tmp_path / "out"),
    ]  # fmt: skip
    return command, f"http://127.0.0.1:{port}/api"


def wrapper_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = "2"  # the runner picks a flow run up quickly
    return env


def processes() -> dict[int, tuple[int, int, str]]:
    """pid → (parent pid, process group, state) of every live process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry)] = (int(fields[1]), int(fields[2]), fields[0])
    return found


def family(pid: int) -> set[int]:
    """``pid`` and all its descendants."""
    table = processes()
    found, grew = {pid}, True
    while grew:
        more = {p for p, (parent, _, _) in table.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found & set(table)


def groups_of(pid: int) -> set[int]:
    """The process groups of ``pid`` and of all its descendants."""
    table = processes()
    return {table[p][1] for p in family(pid) if p in table}


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def left_in(groups: set[int]) -> list[int]:
    return [p for p, (_, group, state) in processes().items() if group in groups and state != "Z"]


def left_after(groups: set[int], timeout: float = 30.0) -> list[int]:
    """The processes of ``groups`` still alive ``timeout`` seconds on (then killed: a failed
    test leaves nothing behind either)."""
    deadline = time.monotonic() + timeout
    while left_in(groups) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = left_in(groups)
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return left


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def api(api_url: str, method: str, path: str, body: dict | None = None) -> dict:
    """One call to the Prefect API; a 503 (the server's database busy: Prefect's own client
    retries it) is retried for up to a minute, as Prefect's client would."""
    data = json.dumps(body).encode() if body is not None else None
    deadline = time.monotonic() + 60
    while True:
        request = urllib.request.Request(
            f"{api_url}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
            retry_after = exc.headers.get("Retry-After") or ""
            time.sleep(min(5.0, float(retry_after)) if retry_after.isdigit() else 1.0)


def runner_polls(api_url: str) -> bool:
    """Whether the flow runner serving the nightly deployment has polled the server."""
    try:
        deployment = api(api_url, "GET", "/deployments/name/nightly-recipes/nightly")
    except OSError:
        return False
    return deployment.get("status") == "READY"


class Terminal:
    """A pseudo-terminal whose output a thread-free reader collects on demand."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.output = b""

    def read(self) -> str:
        while select.select([self.master], [], [], 0)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.output += chunk
        return self.output.decode(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        try:
            wait_for(lambda: text in self.read(), timeout, f"{text!r} in the terminal")
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}; it shows:\n{self.read()[-3000:]}") from None


def make_controlling_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_in_a_terminal_the_first_start_asks_nothing_and_a_flow_run_runs(tmp_path):
    """The wrapper's first start in a fresh output dir, in a pseudo-terminal that is its
    controlling terminal (Prefect prompts only there): no profile prompt, the server answers,
    the deployment's flow run completes into the UI's own directories (not make demo's), and
    Ctrl-C stops every process the wrapper started."""
    command, api_url = wrapper_command(tmp_path)
    terminal = Terminal()
    wrapper = subprocess.Popen(
        command, cwd=REPO, env=wrapper_env(), stdin=terminal.slave, stdout=terminal.slave,
        stderr=terminal.slave, start_new_session=True, preexec_fn=make_controlling_terminal,
    )  # fmt: skip
    os.close(terminal.slave)
    groups = {wrapper.pid}
    try:
        terminal.wait_for("Your deployments are being served", timeout=180)
        groups = groups_of(wrapper.pid)
        deployment = api(api_url, "GET", "/deployments/name/nightly-recipes/nightly")
        flow_run = api(api_url, "POST", f"/deployments/{deployment['id']}/create_flow_run", {})
        ended = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

        def final_state() -> dict | None:
            terminal.read()  # keep the terminal drained
            run = api(api_url, "GET", f"/flow_runs/{flow_run['id']}")
            return run if run["state"]["type"] in ended else None

        run = wait_for(final_state, timeout=180, what="the flow run to end")
        assert run["state"]["type"] == "COMPLETED", terminal.read()[-3000:]
        assert run["name"].startswith("nightly-")
        groups |= groups_of(wrapper.pid)
        os.write(terminal.master, b"\x03")  # Ctrl-C
        assert wrapper.wait(timeout=90) == 0
    finally:
        if wrapper.poll() is None:
            os.killpg(wrapper.pid, signal.SIGKILL)
            wrapper.wait()
        left = left_after(groups)
    assert not left, left
    shown = terminal.read()
    assert not [prompt for prompt in PROMPTS if prompt in shown], shown[-3000:]
    assert "new run" in shown  # the flow's own word on which run it is
    out = tmp_path / "out"
    assert list((out / "prefect-ui" / "datasets" / "recipes").glob("*/_SUCCESS"))
    assert not (out / "datasets").exists() and not (out / "runs").exists()


#: what happens to the server before the SIGTERM, and how long the wrapper may take to stop
#: (a grace period for the flow runner, then SIGKILL: ~15 s; the wrapper this replaced took
#: ~80 s once the server was killed, and did not stop at all while it hung)
SERVER_FIRST = {
    "all-up": (None, 90),
    "server-killed": ("SIGKILL", 60),
    "server-hung": ("SIGSTOP", 90),
}


@pytest.mark.parametrize("server_first", sorted(SERVER_FIRST))
def test_sigterm_stops_a_wrapper_started_with_sigint_ignored(tmp_path, server_first):
    """Started as a script's ``&`` starts it (SIGINT ignored, no terminal): SIGTERM stops the
    wrapper and every process it started, also once the server is gone (killed) or no longer
    answers (stopped)."""
    server_signal, bound = SERVER_FIRST[server_first]
    command, api_url = wrapper_command(tmp_path)
    log = tmp_path / "wrapper.log"
    with open(log, "wb") as output:
        wrapper = subprocess.Popen(
            command, cwd=REPO, env=wrapper_env(), stdin=subprocess.DEVNULL, stdout=output,
            stderr=output, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )  # fmt: skip
    groups = {wrapper.pid}
    try:
        wait_for(lambda: b"Your deployments are being served" in log.read_bytes(), 180, "serve")
        wait_for(lambda: runner_polls(api_url), 60, "the flow runner to poll the server")
        groups = groups_of(wrapper.pid)
        started = family(wrapper.pid)
        assert len(started) >= 3  # the wrapper, the server, the simulator (and a flow runner)
        if server_signal:
            (server,) = [p for p in started if b"server\x00start" in cmdline(p)]
            os.kill(server, getattr(signal, server_signal))
            time.sleep(5)  # the runner meets a server that is gone
        os.kill(wrapper.pid, signal.SIGTERM)
        wrapper.wait(timeout=bound)
    finally:
        stopped = wrapper.poll() is not None
        if not stopped:
            os.killpg(wrapper.pid, signal.SIGKILL)
            wrapper.wait()
        left = left_after(groups)
    assert stopped and not left, (left, log.read_text()[-3000:])


def test_the_ui_says_which_of_its_runs_a_run_today_continues(tmp_path, capsys):
    from dags_examples.generators import CuisineGenerator
    from dags_examples.prefect_ui import say_which_runs

    runs, datasets = tmp_path / "prefect-ui" / "runs", tmp_path / "prefect-ui" / "datasets"
    say_which_runs(str(runs), str(datasets), str(tmp_path / "runs"))
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    assert f"(run key {today}) starts new runs" in capsys.readouterr().out
    with Simulator() as sim:
        llm = CuisineGenerator("gpt-4o-mini", backend_params={"base_url": sim.base_url})
        run = steps.prepare(llm, None, str(runs), run_key=today)
        other = steps.prepare(llm, None, str(runs), run_key="2026-01-01")  # another night
        say_which_runs(str(runs), str(datasets), str(tmp_path / "runs"))
        shown = capsys.readouterr().out
        assert f"continues this UI's earlier runs of {today}" in shown
        assert f"CuisineGenerator run {run['run_id']}" in shown
        assert "1 of 1 requests still owe an answer" in shown and other["run_id"] not in shown
        steps.run_online(run, llm=llm)
        steps.finalize(run, llm=llm)
        say_which_runs(str(runs), str(datasets), str(tmp_path / "runs"))
        assert "finalized; sends nothing" in capsys.readouterr().out
