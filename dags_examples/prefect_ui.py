"""``make prefect-ui``: a local Prefect server with its UI, the simulator, and the nightly flow
served against it: open the UI, press "Run" on ``nightly-recipes/nightly``, watch the flow run's
progress artifact (a row per shard), the final tables and output notes (Artifacts), and the
datasets' materializations (Event Feed).

Prefect's state (database, results) stays under ``./curator-output/.prefect``; the UI's runs
and datasets under ``./curator-output/prefect-ui/`` (apart from ``make demo``'s). Ctrl-C (or
SIGTERM, SIGHUP) stops everything.

Invariants:
- ``prefect server start`` never prompts: the UI's own ``PREFECT_HOME`` holds a profile whose
  ``PREFECT_API_URL`` is this server, written before the server starts (the server's start-up
  check reads the profile, not the environment), prompts are off and its standard input is
  ``/dev/null``;
- the UI's runs are its own (``<output>/prefect-ui/runs``): a run the UI starts never re-opens
  one of ``make demo``; at start the wrapper says which of its own runs a run today continues;
- the server, the flow runner and the simulator each run in a process group of their own;
  SIGINT, SIGTERM and SIGHUP stop them alike (SIGINT too when it was ignored at start, as a
  script's ``&`` does), the runner first while the server still answers, each group with
  SIGTERM then SIGKILL after a grace period, so nothing is left behind, even when the server is
  already gone; when the server or the runner ends on its own, the rest are stopped too.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

#: the signals that stop the UI (SIGHUP: the terminal went away)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: seconds a process group gets between SIGTERM and SIGKILL
GRACE_SECONDS = 10.0
#: the profile written into the UI's PREFECT_HOME
PROFILE = "curator-prefect-ui"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Stopped(Exception):
    """A stop signal arrived, or a process the UI needs ended."""


class StopSignals:
    """Turns the stop signals into an event the main loop polls (installed over SIG_IGN)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: str | None = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = self.received or signal.Signals(signum).name
        self.event.set()

    def check(self) -> None:
        if self.event.is_set():
            raise Stopped(f"{self.received} received")


def write_profile(home: str, api_url: str) -> str:
    """The UI's ``profiles.toml``: one active profile pointing at this server (what
    ``prefect server start`` checks before it would ask how to proceed)."""
    path = os.path.join(home, "profiles.toml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f'active = "{PROFILE}"\n\n[profiles.{PROFILE}]\n')
        handle.write(f'PREFECT_API_URL = "{api_url}"\n')
    return path


def prefect_environment(home: str, api_url: str) -> dict[str, str]:
    """What the server, the runner and its flow runs share: this UI's home, profile and API."""
    return {
        **os.environ,
        "PREFECT_HOME": home,
        "PREFECT_PROFILES_PATH": os.path.join(home, "profiles.toml"),
        "PREFECT_LOCAL_STORAGE_PATH": os.path.join(home, "storage"),
        "PREFECT_MEMO_STORE_PATH": os.path.join(home, "memo_store.toml"),
        "PREFECT_API_URL": api_url,
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p),
    }


def start_group(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``command`` as the leader of a process group of its own, with no standard input."""
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def stop_group(process: subprocess.Popen[Any] | None, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM ``process``'s group (and SIGCONT: a stopped process handles it too), SIGKILL
    what is left of it after ``grace`` seconds (the leader's children too: a flow run the
    runner started)."""
    if process is None:
        return
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, signum)
            if signum == signal.SIGTERM:
                os.killpg(process.pid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            break
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of a leader that exited
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(timeout=5.0)


def wait_healthy(
    api_url: str, server: subprocess.Popen[Any], signals: StopSignals, timeout: float = 120.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        signals.check()
        if server.poll() is not None:
            raise Stopped(f"prefect server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise Stopped(f"prefect server did not answer at {api_url} within {timeout:.0f}s")


def earlier_runs(working_dir: str, run_key: str) -> list[str]:
    """One line per run of ``run_key`` under ``working_dir``: what a run today continues."""
    from curator_flows import steps

    lines = []
    manifests = glob.glob(os.path.join(glob.escape(working_dir), "*", "manifest.json"))
    for path in sorted(manifests, key=os.path.getmtime):
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        if manifest.get("run_key") != run_key:
            continue
        path_of_class = str(manifest.get("llm", {}).get("class", ""))
        name = path_of_class.replace(":", ".").rsplit(".", 1)[-1] or "run"
        created = datetime.datetime.fromtimestamp(manifest["created_at"], datetime.UTC)
        try:
            totals = steps.status(os.path.dirname(path))
        except Exception as exc:  # a view: never stops the UI
            lines.append(f"  {name} run {manifest['run_id']} (status unreadable: {exc})")
            continue
        pending = totals["totals"]["pending"]
        state = (
            "finalized; sends nothing"
            if totals["finalized"] and not pending
            else f"{pending} of {totals['totals']['requests']} requests still owe an answer"
        )
        lines.append(
            f"  {name} run {manifest['run_id']} (created {created:%Y-%m-%d %H:%M} UTC: {state})"
        )
    return lines


def say_which_runs(working_dir: str, output_root: str, demo_dir: str) -> None:
    """Where the UI's runs go, and which of its earlier runs a run started today continues
    (the run key is the flow run's scheduled date, UTC)."""
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    print(f"UI runs:     {working_dir}   (make demo's stay apart, under {demo_dir})")
    print(f"UI datasets: {output_root}")
    found = earlier_runs(working_dir, today) if os.path.isdir(working_dir) else []
    if found:
        print(
            f"A run started today (run key {today}) continues this UI's earlier runs of "
            f"{today}:\n" + "\n".join(found)
        )
        print(
            '  to generate afresh, start it with a run_date of your own: "Run" → "Custom run" '
            "→ run_date (any other key)"
        )
    else:
        print(f"A run started today (run key {today}) starts new runs.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4200, help="the Prefect UI/API port")
    parser.add_argument("--sim-port", type=int, default=8765, help="the simulator's port")
    parser.add_argument("--output", default="curator-output")
    args = parser.parse_args(argv)

    signals = StopSignals()
    output = os.path.abspath(args.output)
    home = os.path.join(output, ".prefect")
    working_dir = os.path.join(output, "prefect-ui", "runs")
    output_root = os.path.join(output, "prefect-ui", "datasets")
    os.makedirs(home, exist_ok=True)
    api_url = f"http://127.0.0.1:{args.port}/api"
    write_profile(home, api_url)
    env = prefect_environment(home, api_url)
    os.environ.update(env)  # the simulator's child and this process's imports see the same

    server = runner = simulator = None
    code = 0
    try:
        server = start_group(
            [sys.executable, "-m", "prefect", "--no-prompt", "server", "start",
             "--host", "127.0.0.1", "--port", str(args.port)],
            env,
        )  # fmt: skip
        wait_healthy(api_url, server, signals)
        from curator_flows.testing.simulator import run_in_subprocess

        simulator, base_url = run_in_subprocess(args.sim_port, latency=0.05, rpm=6000)
        signals.check()
        print(f"\nPrefect UI: http://127.0.0.1:{args.port} (this machine only)")
        print(f"simulator:   {base_url}")
        say_which_runs(working_dir, output_root, os.path.join(output, "runs"))
        print('Run the flow: UI → Deployments → "nightly-recipes/nightly" → Run → Quick run')
        print("Ctrl-C stops the server, the simulator and the flow runner.\n", flush=True)
        runner = start_group(
            [sys.executable, "-m", "dags_examples.prefect_nightly", "serve",
             "--base-url", base_url, "--working-dir", working_dir, "--output-root", output_root],
            env,
        )  # fmt: skip
        while not signals.event.wait(0.5):
            for name, process in (("prefect server", server), ("flow runner", runner)):
                if process.poll() is not None:
                    raise Stopped(f"the {name} exited with code {process.returncode}")
        signals.check()
    except Exception as stop:  # a signal, a process that ended, one that did not start
        code = 0 if isinstance(stop, Stopped) and signals.received else 1
        print(f"\n[prefect-ui] {stop}: stopping", file=sys.stderr, flush=True)
    finally:
        stop_group(runner)  # first, while the server still answers its shutdown calls
        _stop_child(simulator)
        stop_group(server)
    return code


def _stop_child(process: subprocess.Popen[Any] | None) -> None:
    """The simulator: a plain child (it also exits when this process is gone)."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    sys.exit(main())
