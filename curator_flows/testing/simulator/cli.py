"""Command line (``python -m curator_flows.testing.simulator``) and `run_in_subprocess`.

Invariants:
- The first line the server prints on stdout is ``READY http://HOST:PORT/v1`` once it serves;
  nothing else is printed to stdout afterwards (so a parent may leave the pipe unread).
- With ``--exit-with-parent PID`` the server exits when that process is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from .config import FAULT_KINDS, SimulatorConfig, parse_fault_spec
from .runner import bind_socket, close_loop, new_event_loop, start_site
from .state import SimState

READY_PREFIX = "READY "
_READY_RE = re.compile(r"^READY (http://\S+)$")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="curator-flows simulator",
        description="An OpenAI- and Anthropic-compatible API simulator for offline testing.",
        epilog=(
            "Fault kinds: " + ", ".join(sorted(FAULT_KINDS)) + ". Besides --fault rates, a prompt "
            "can ask for faults with markers: [[sim:500]] (every attempt), [[sim:500x2]] (the "
            "first 2 attempts); several markers apply one after the other. Control endpoints: "
            "GET /_sim/stats, POST /_sim/reset, POST /_sim/config."
        ),
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument("--rpm", type=int, help="requests per minute (default: unlimited)")
    p.add_argument("--tpm", type=int, help="tokens per minute (default: unlimited)")
    p.add_argument("--input-tpm", type=int, help="Anthropic input tokens per minute")
    p.add_argument("--output-tpm", type=int, help="Anthropic output tokens per minute")
    p.add_argument("--burst-seconds", type=float, help="bucket capacity in seconds of limit")
    p.add_argument("--rpd", type=int, help="OpenAI requests per day (default: unlimited)")
    p.add_argument("--tpd", type=int, help="OpenAI tokens per day (default: unlimited)")
    p.add_argument(
        "--credit-requests",
        type=int,
        help="the account's credit in paid requests; then every paid call is refused as out "
        "of credit (default: unlimited)",
    )
    p.add_argument("--latency", type=float, help="seconds before each response")
    p.add_argument("--latency-jitter", type=float, help="extra uniform random latency")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help="inject a fault kind at a rate, e.g. 500=0.1 (repeatable)",
    )
    p.add_argument("--hang-seconds", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--require-api-key", help="reject requests without this key")
    p.add_argument(
        "--batch-timings",
        metavar="PHASE=SECONDS,...",
        help="e.g. validating=1,in_progress=10,finalizing=1,cancelling=1",
    )
    p.add_argument("--batch-fail-validation", action="store_true", default=None)
    p.add_argument("--batch-expire-fraction", type=float)
    p.add_argument(
        "--batch-enqueued-token-limit",
        type=int,
        metavar="TOKENS",
        help="OpenAI: input tokens of one model's live batches; a batch past it fails "
        "validation with token_limit_exceeded (default: unlimited)",
    )
    p.add_argument(
        "--batch-queue-request-limit",
        type=int,
        metavar="REQUESTS",
        help="Anthropic: batch requests in the processing queue; a create past it gets 429 "
        "rate_limit_error (default: unlimited)",
    )
    p.add_argument("--config-json", help="a JSON object of SimulatorConfig fields")
    p.add_argument("--exit-with-parent", type=int, metavar="PID", help=argparse.SUPPRESS)
    p.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
    return p


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """A `SimulatorConfig` from parsed arguments (``--config-json`` first, flags override)."""
    values: dict[str, Any] = {}
    if args.config_json:
        loaded = orjson.loads(args.config_json)
        if not isinstance(loaded, dict):
            raise ValueError("--config-json must be a JSON object")
        values.update(loaded)
    values["host"] = args.host
    values["port"] = args.port
    for name in (
        "rpm",
        "tpm",
        "input_tpm",
        "output_tpm",
        "burst_seconds",
        "rpd",
        "tpd",
        "credit_requests",
        "latency",
        "latency_jitter",
        "hang_seconds",
        "seed",
        "require_api_key",
        "batch_fail_validation",
        "batch_expire_fraction",
        "batch_enqueued_token_limit",
        "batch_queue_request_limit",
    ):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    if args.fault:
        faults = dict(values.get("faults") or {})
        for spec in args.fault:
            kind, rate = parse_fault_spec(spec)
            faults[kind] = rate
        values["faults"] = faults
    if args.batch_timings:
        timings = dict(values.get("batch_timings") or {})
        for pair in args.batch_timings.split(","):
            phase, _, seconds = pair.partition("=")
            timings[phase.strip()] = float(seconds)
        values["batch_timings"] = timings
    return SimulatorConfig.from_dict(values)


async def _serve(config: SimulatorConfig, parent_pid: int | None) -> None:
    state = SimState(config)
    sock = bind_socket(config.host, config.port)
    port = sock.getsockname()[1]
    runner = await start_site(state, sock)
    print(f"{READY_PREFIX}http://{config.host}:{port}/v1", flush=True)
    print(
        f"curator-flows simulator serving on http://{config.host}:{port} "
        f"(OpenAI base_url http://{config.host}:{port}/v1); Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
            if parent_pid is not None and not _alive(parent_pid):
                break
    finally:
        await runner.cleanup()


def _alive(pid: int) -> bool:
    if os.getppid() != pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the simulator in the foreground until interrupted; returns an exit status."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    loop = new_event_loop(not args.no_uvloop)
    try:
        loop.run_until_complete(_serve(config, args.exit_with_parent))
    except KeyboardInterrupt:
        pass
    finally:
        close_loop(loop)
    return 0


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[3])


def run_in_subprocess(
    port: int = 0, *, timeout: float = 30.0, use_uvloop: bool = True, **config: Any
) -> tuple[subprocess.Popen[str], str]:
    """Start the simulator in a child process; returns ``(process, base_url)``.

    `config` takes `SimulatorConfig` fields. The child exits when this process does; stop it
    earlier with ``process.terminate(); process.wait()``.
    """
    SimulatorConfig.from_dict({**config, "port": port})  # validate here, not in the child
    cmd = [
        sys.executable,
        "-m",
        "curator_flows.testing.simulator",
        "--port",
        str(port),
        "--host",
        str(config.pop("host", "127.0.0.1")),
        "--config-json",
        orjson.dumps(config).decode(),
        "--exit-with-parent",
        str(os.getpid()),
    ]
    if not use_uvloop:
        cmd.append("--no-uvloop")
    env = dict(os.environ)
    root = _package_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    match = _READY_RE.match(line[0].strip()) if line else None
    if match is None:
        proc.kill()
        proc.wait()
        got = line[0].strip() if line else "nothing"
        raise RuntimeError(f"simulator subprocess did not start (got {got!r})")
    return proc, match.group(1)
