"""``make prefect-ui``: a local Prefect server with its UI, the simulator, and the nightly flow
served against it: open the UI, press "Run" on ``nightly-recipes/nightly``, watch the shards'
progress artifacts and the final tables (Artifacts page) and the published datasets (Assets).

Ctrl-C stops all three. Prefect's state (database, results) stays under
``./curator-output/.prefect``; datasets land under ``./curator-output/datasets``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request


def _wait_healthy(api_url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"prefect server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"prefect server did not answer at {api_url} within {timeout:.0f}s")


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server and the simulator too


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4200, help="the Prefect UI/API port")
    parser.add_argument("--sim-port", type=int, default=8765, help="the simulator's port")
    parser.add_argument("--output", default="curator-output")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _stop)
    home = os.path.abspath(os.path.join(args.output, ".prefect"))
    os.makedirs(home, exist_ok=True)
    api_url = f"http://127.0.0.1:{args.port}/api"
    os.environ.update(
        PREFECT_HOME=home,
        PREFECT_LOCAL_STORAGE_PATH=os.path.join(home, "storage"),
        PREFECT_MEMO_STORE_PATH=os.path.join(home, "memo_store.toml"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_API_URL=api_url,
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(args.port)],
    )  # fmt: skip
    simulator = None
    try:
        _wait_healthy(api_url, server)
        from curator_flows.testing.simulator import run_in_subprocess

        simulator, base_url = run_in_subprocess(args.sim_port, latency=0.05, rpm=6000)
        print(f"\nPrefect UI: http://127.0.0.1:{args.port}   simulator: {base_url}")
        print('Run the flow: UI → Deployments → "nightly-recipes/nightly" → Run → Quick run\n')
        from dags_examples.prefect_nightly import serve

        serve(base_url=base_url)
    except KeyboardInterrupt:
        pass
    finally:
        for process in (simulator, server):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
