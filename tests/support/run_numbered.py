"""Run ``Numbered`` over N rows: ``python run_numbered.py BASE_URL WORKING_DIR N [CONCURRENCY]``."""

from __future__ import annotations

import sys

from resume_llms import Numbered

base_url, working_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 16
llm = Numbered(
    "gpt-4o-mini",
    backend_params={
        "base_url": base_url,
        "api_key": "test-key",
        "max_concurrent_requests": concurrency,
        "progress": "off",
    },
)
result = llm([{"n": i} for i in range(n)], working_dir=working_dir)
print(result.cache_dir)
