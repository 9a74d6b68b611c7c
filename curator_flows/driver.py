"""The in-process driver: ``LLM.__call__`` as prepare → send (online, batch or offline) →
finalize, in this process.

Invariants:
- the driver sequences the same engine functions an orchestrator calls one step at a time, so
  an in-process run and an orchestrated run leave the same run directory and report the same
  statistics (both read the run's ledger);
- a finished run whose output was parsed by the same ``parse()`` and state and judged by the
  same acceptance rule (``response_format`` code and schema, invalid finish reasons), with
  nothing failed, is returned without sending, parsing or writing anything;
- when finalize takes back stored answers the current model refuses, the driver sends those
  requests again and finalizes once more, in the same call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .acceptance import Acceptance
from .credentials import Credentials
from .finalize import check_complete, finalize_run, response_of
from .prepare import prepare_run
from .store import OUTPUT_STATS, RunStore

if TYPE_CHECKING:
    from .llm import LLM
    from .types import CuratorResponse


def finished_output(store: RunStore, llm: LLM) -> dict[str, Any] | None:
    """The stored output when it is complete, parsed by the same ``parse()`` and state and
    judged by the same acceptance rule."""
    output = store.read_json_if_exists(OUTPUT_STATS)
    if (
        output is None
        or output.get("failed")
        or output.get("parse_fingerprint") != llm.parse_fingerprint()
    ):
        return None
    if output.get("acceptance_fingerprint") != Acceptance(llm).fingerprint():
        return None
    return output


def run_in_process(
    llm: LLM,
    dataset: Any,
    working_dir: str | None,
    *,
    run_key: str | None = None,
    credentials: Credentials | dict[str, Any] | None = None,
) -> CuratorResponse:
    """Run every step of ``llm`` over ``dataset`` here and return the response."""
    credentials = Credentials.coerce(credentials)
    store, manifest, _ = prepare_run(
        llm, dataset, working_dir, run_key=run_key, credentials=credentials
    )
    output = finished_output(store, llm)
    if output is None:
        if manifest["requests"]:
            _send(store, manifest, llm, credentials)
        output = finalize_run(store, manifest, llm)
        if output.get("invalidated"):  # stored answers the current model refuses: ask again
            _send(store, manifest, llm, credentials)
            output = finalize_run(store, manifest, llm)
    check_complete(store, output, llm.config.require_all_responses)
    return response_of(store, manifest, output)


def _send(store: RunStore, manifest: dict[str, Any], llm: LLM, credentials: Credentials) -> None:
    if llm.mode == "online":
        from .online import run_online

        run_online(store.uri, llm=llm, credentials=credentials)
    elif llm.mode == "batch":
        from .batch.inprocess import run_batch_in_process

        run_batch_in_process(store, manifest, llm, credentials)
    else:
        from .offline import run_offline

        run_offline(store.uri, llm=llm, credentials=credentials)
