"""Reading a Parquet dataset input in chunks: rows/s and peak RSS of ``inputs.iter_rows``.

Writes an N-row Parquet file (a prompt string, an integer and a timezone-aware timestamp per
row) once with one row group (pyarrow's default for up to 1Mi rows: the worst case for a
streaming reader) and once with 64Ki-row groups, then reads each in a fresh process. For
scale, also reports the peak RSS of loading the whole file with ``pyarrow.parquet.read_table``
and converting it to Python rows at once.

    python benchmarks/read_parquet_input.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STREAM = """
import json, sys, time

def hwm():  # VmHWM: this process's peak RSS (ru_maxrss survives exec)
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) / 1024 for l in status if l.startswith("VmHWM:"))

from curator_flows.inputs import iter_rows
import pyarrow.parquet  # imported before the baseline: growth is the data alone
base = hwm()
start, count = time.perf_counter(), 0
for row in iter_rows(sys.argv[1]):
    count += 1
wall = time.perf_counter() - start
peak = hwm()
print(json.dumps({"rows": count, "wall": wall, "peak": peak, "base": base}))
"""

WHOLE = """
import json, sys, time

def hwm():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) / 1024 for l in status if l.startswith("VmHWM:"))

import pyarrow.parquet as pq
base = hwm()
start = time.perf_counter()
rows = pq.read_table(sys.argv[1]).to_pylist()
wall = time.perf_counter() - start
peak = hwm()
print(json.dumps({"rows": len(rows), "wall": wall, "peak": peak, "base": base}))
"""


def write(path: Path, rows: int, row_group_size: int) -> None:
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    chunk = 65_536
    schema = pa.schema(
        [("prompt", pa.string()), ("n", pa.int64()), ("at", pa.timestamp("us", tz="UTC"))]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for offset in range(0, rows, chunk):
            n = range(offset, min(rows, offset + chunk))
            table = pa.table(
                {
                    "prompt": [f"benchmark prompt number {i}" for i in n],
                    "n": list(n),
                    "at": [start + datetime.timedelta(seconds=i) for i in n],
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=row_group_size)


def child(code: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for label, group in (("one row group", 1 << 20), ("64Ki-row groups", 1 << 16)):
            path = Path(tmp) / f"rows-{group}.parquet"
            write(path, args.rows, group)
            figures = child(STREAM, path)
            assert figures["rows"] == args.rows, figures
            print(
                f"read_parquet_input[{label}]: rows={args.rows}, "
                f"file_mb={path.stat().st_size / 1e6:.0f}, "
                f"rows_per_s={args.rows / figures['wall']:,.0f}, wall_s={figures['wall']:.1f}, "
                f"peak_rss_mb={figures['peak']:.0f}, "
                f"rss_growth_mb={figures['peak'] - figures['base']:.0f}"
            )
            sys.stdout.flush()
        whole = child(WHOLE, path)
        print(
            f"read_parquet_input[whole file at once, for scale]: "
            f"peak_rss_mb={whole['peak']:.0f}, rss_growth_mb={whole['peak'] - whole['base']:.0f}"
        )


if __name__ == "__main__":
    main()
