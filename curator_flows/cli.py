"""``curator-flows``: inspect and control runs from a shell (no interactive prompts).

    curator-flows status RUN_URI [--json]     per-shard state, counts and cost so far
    curator-flows cancel RUN_URI [--json]     cancel every live batch of a batch run
    curator-flows estimate RUN_URI [--json]   projected cost of what is pending, spent so far
    curator-flows view RUN_URI [--port N]     a local read-only web page: progress, failures, rows
    curator-flows simulator [ARGS...]         the OpenAI/Anthropic simulator (its own --help)

API keys come from the environment (``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``), never from
the command line. Exit status: 0 on success, 1 when the command failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curator-flows", description="Inspect and control curator-flows runs."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="per-shard state, counts and cost of a run")
    status.add_argument("run_uri", metavar="RUN_URI", help="the run directory (any fsspec URI)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    cancel = commands.add_parser("cancel", help="cancel every live batch of a batch run")
    cancel.add_argument("run_uri", metavar="RUN_URI")
    cancel.add_argument("--json", action="store_true", help="print the result as JSON")
    estimate = commands.add_parser(
        "estimate", help="projected cost of the pending requests, spent so far, budget"
    )
    estimate.add_argument("run_uri", metavar="RUN_URI")
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")
    view = commands.add_parser(
        "view",
        help="serve a local, read-only web page of a run: progress, failures, rows",
        description="Serve a read-only page of the run on 127.0.0.1 (nothing leaves this "
        "machine) until interrupted: progress while it runs, counts, cost, failures by reason, "
        "and a paged, searchable table of input rows, raw responses and parsed outputs.",
    )
    view.add_argument("run_uri", metavar="RUN_URI", help="the run directory (any fsspec URI)")
    view.add_argument(
        "--port", type=int, default=0, help="the port on 127.0.0.1 (default: a free one)"
    )
    browser = view.add_mutually_exclusive_group()
    browser.add_argument(
        "--open", dest="open_browser", action="store_true", default=None,
        help="open the page in a web browser (the default when a display is available)",
    )  # fmt: skip
    browser.add_argument(
        "--no-browser", dest="open_browser", action="store_false",
        help="only print the page's URL",
    )  # fmt: skip
    view.add_argument(
        "--storage-options",
        metavar="JSON",
        help="fsspec storage options of RUN_URI as JSON, e.g. an endpoint_url (credentials "
        "come from the environment or fsspec's configuration, not from here)",
    )
    commands.add_parser(
        "simulator", help="run the OpenAI/Anthropic simulator (see: simulator --help)",
        add_help=False,
    )  # fmt: skip
    return parser


def _money(value: float) -> str:
    return f"${value:,.4f}"


def format_status(report: dict[str, Any]) -> str:
    """A human-readable table of :func:`curator_flows.steps.status`."""
    totals = report["totals"]
    lines = [
        f"run {report['run_id']} ({report['mode']}, {report['backend']}, {report['model_name']})",
        f"  {report['run_uri']}",
        f"  {totals['succeeded']}/{totals['requests']} succeeded, {totals['failed']} failed, "
        f"{totals['pending']} pending; cost so far {_money(totals['cost'])}"
        f"{'' if not totals.get('reserved') else ', reserved ' + _money(totals['reserved'])}; "
        f"tokens in/out {totals['input_tokens']}/{totals['output_tokens']}"
        + ("; finalized" if report.get("finalized") else "")
        + ("; CANCELLED" if report.get("cancelled") else ""),
        *(
            [
                f"  {totals['uncollected']} completed at the provider inside live or cancelled "
                "batches (billed), not collected yet: a collect (a retry of the task) stores them"
            ]
            if totals.get("uncollected")
            else []
        ),
        "",
        f"  {'shard':<7} {'state':<18} {'ok':>8} {'failed':>7} {'pending':>8} {'cost':>11}  batch",
    ]
    for shard in report["shards"]:
        batch = shard.get("batch") or {}
        where = ""
        if batch:
            where = f"round {batch.get('round')} {batch.get('batch_id') or '-'} "
            where += batch.get("status") or ""
            if shard.get("uncollected"):
                where += f" ({shard['uncollected']} completed, not collected)"
        row = (
            f"  {shard['shard']:<7} {shard['state']:<18} {shard['succeeded']:>8} "
            f"{shard['failed']:>7} {shard['pending']:>8} {_money(shard['cost']):>11}  {where}"
        )
        lines.append(row.rstrip())
    return "\n".join(lines)


def format_estimate(report: dict[str, Any]) -> str:
    """A human-readable view of :func:`curator_flows.steps.estimate`."""
    budget = (
        f"max_cost {_money(report['max_cost'])}, headroom {_money(report['headroom'])}"
        + ("" if report["within_budget"] else " (OVER BUDGET)")
        if report["max_cost"] is not None
        else "no max_cost"
    )
    prices = (
        f"${report['input_cost_per_million']}/${report['output_cost_per_million']} per M tokens"
        if report["input_cost_per_million"] is not None
        else "no price known for this model (set in_mtok_cost / out_mtok_cost)"
    )
    return "\n".join(
        [
            f"run {report['run_id']} ({report['model_name']})",
            f"  {report['pending']} pending of {report['requests']} requests; "
            f"~{report['estimated_input_tokens']} input + ~{report['estimated_output_tokens']} "
            "output tokens",
            f"  projected {_money(report['projected_cost'])}; spent so far "
            f"{_money(report['spent'])}, reserved {_money(report.get('reserved') or 0.0)}; "
            f"{budget}",
            f"  prices: {prices}",
        ]
    )


def _wants_browser() -> bool:
    """Whether a browser can show a page here (a desktop session, not a remote shell)."""
    import os

    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _view(args: argparse.Namespace) -> int:
    from .viewer import Viewer

    try:
        storage_options = json.loads(args.storage_options) if args.storage_options else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--storage-options is not JSON: {exc}") from None
    if storage_options is not None and not isinstance(storage_options, dict):
        raise ValueError("--storage-options must be a JSON object")
    viewer = Viewer(args.run_uri, storage_options, port=args.port)
    print(
        f"curator-flows view: run {viewer.view.manifest['run_id']} at {viewer.url} "
        "(read-only, on this machine only; Ctrl-C stops)",
        flush=True,
    )
    if args.open_browser if args.open_browser is not None else _wants_browser():
        import webbrowser

        webbrowser.open(viewer.url)
    try:
        viewer.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "simulator":
        from .testing.simulator import main as simulator_main

        return simulator_main(argv[1:])
    args = _parser().parse_args(argv)
    from . import steps
    from .errors import CuratorFlowsError

    try:
        if args.command == "view":
            return _view(args)
        if args.command == "status":
            report = steps.status(args.run_uri)
            print(json.dumps(report, indent=2) if args.json else format_status(report))
            return 0
        if args.command == "estimate":
            report = steps.estimate(args.run_uri)
            print(json.dumps(report, indent=2) if args.json else format_estimate(report))
            return 0
        if args.command == "cancel":
            result = steps.cancel(args.run_uri)
            if args.json:
                print(json.dumps(result, indent=2))
            else:
                for batch in result["batches"]:
                    print(f"shard {batch['shard']}: batch {batch['batch_id']} {batch['status']}")
                if not result["batches"]:
                    print("no live batch to cancel; later rounds will not be submitted")
                for error in result["errors"]:
                    print(f"shard {error['shard']}: {error['error']}", file=sys.stderr)
            return 1 if result["errors"] else 0
    except (CuratorFlowsError, FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        print(f"curator-flows {args.command}: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
