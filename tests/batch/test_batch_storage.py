"""Batch runs on object storage: ``s3://`` through s3fs against moto's server (real HTTP) and
``memory://``. There, responses and retry logs are immutable part files, not appends."""

from __future__ import annotations

import pytest
from batch_helpers import make_llm
from batch_llms import Numbered

from curator_flows import steps


@pytest.fixture
def s3_working_dir(s3_bucket):
    return f"{s3_bucket}/nightly"


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_s3_working_dir_with_a_retried_item(bsim, s3_working_dir, backend):
    rows = [{"n": i} for i in range(12)]
    rows[4]["marker"] = " [[sim:500x1]]"
    llm = make_llm(Numbered, backend, bsim, batch_size=6)
    result = llm(rows, working_dir=s3_working_dir)
    assert result.cache_dir.startswith(s3_working_dir)
    assert result.dataset["n"] == list(range(12)) and result.request_stats.failed == 0
    report = steps.status(result.cache_dir)
    assert [s["state"] for s in report["shards"]] == ["done", "done"]
    assert report["shards"][0]["batch"]["round"] == 1  # the retried item took a second round
    assert bsim.stats()["by_prompt"]["number 4 [[sim:500x1]]"] == 2

    again = llm(rows, working_dir=s3_working_dir)  # resumes from s3 alone: nothing is sent
    assert again.dataset["n"] == list(range(12))
    assert bsim.stats()["batches_created"] == 3


def test_memory_working_dir(bsim):
    result = make_llm(Numbered, "openai", bsim)(
        [{"n": i} for i in range(5)], working_dir="memory://b"
    )
    assert result.dataset["n"] == list(range(5))
