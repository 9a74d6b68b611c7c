"""The run page on a large run: how long a page of rows, a search, the progress read and the
static report take, and the peak RSS of the viewer's process (bounded by a shard, not the run).

The run is prepared for real and its responses written as the online runner writes them (the
helper of ``publish_parquet.py``), then finalized in its own process. The viewer's reads run in
a fresh process: page 1 (its time includes the first imports), a page in the middle and one in
the last shard, a search whose only match is the last row (it reads every request), a search
stopped by its scan limit, the progress part (``status`` and the failures, every response
file), and the static report's data.

    python benchmarks/viewer_pages.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import report  # noqa: E402
from publish_parquet import FINALIZE, LLM_ARGS, make_run, run_json  # noqa: E402

VIEW = """
import json, resource, sys, time
from curator_flows.report.render import page_html, static_data
from curator_flows.viewer import Viewer

rows = int(sys.argv[2])
figures = {}
def timed(name, fn):
    start = time.perf_counter()
    out = fn()
    figures[name] = round(time.perf_counter() - start, 3)
    return out

viewer = Viewer(sys.argv[1])
view = viewer.view
first = timed("page_1_s", lambda: view.page(1, 50))
middle = timed("page_middle_s", lambda: view.page(view.requests // 100, 50))
last = timed("page_last_s", lambda: view.page(view.requests // 50, 50))
assert first["rows"][0]["outputs"] and last["rows"][-1]["outputs"], "parsed rows shown"
needle = f"describe item {rows - 1}"
found = timed("search_whole_run_s", lambda: view.search(needle, scan_limit=rows))
assert [r["row"] for r in found["rows"]] == [rows - 1], found["rows"]
limited = timed("search_limit_200k_s", lambda: view.search("no such text"))
figures["search_limit_stopped_early"] = limited["stopped_early"]
timed("overview_s", viewer.overview)
html = timed("static_report_s", lambda: page_html(static_data(view), live=False))
viewer.server.server_close()
figures["static_report_mb"] = round(len(html.encode()) / 1e6, 2)
figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(figures))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_uri = make_run(args.rows, os.path.join(tmp, "wd"))
        fin = run_json([sys.executable, "-c", FINALIZE, run_uri, json.dumps(LLM_ARGS)])
        setup = time.perf_counter() - start
        assert fin["rows"] == args.rows, fin
        figures = run_json([sys.executable, "-c", VIEW, run_uri, str(args.rows)])
    report("viewer_pages", {"rows": args.rows, "setup_s": round(setup, 1), **figures})


if __name__ == "__main__":
    main()
