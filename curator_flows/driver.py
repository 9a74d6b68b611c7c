"""The in-process driver: ``LLM.__call__`` as prepare → send (online, batch or offline) →
finalize, in this process.

Invariants:
- the driver sequences the same engine functions an orchestrator calls one step at a time, so
  an in-process run and an orchestrated run leave the same run directory and report the same
  statistics (both read the run's ledger);
- a finished run whose output was parsed by the same ``parse()`` and state, with nothing
  failed, is returned without sending, parsing or writing anything, but only after the
  current acceptance rule judged every stored answer again and made of them exactly what the
  output was parsed from (:func:`~curator_flows.acceptance.judge_stored`), so a rule
  tightened through its environment is applied too;
- when finalize takes back stored answers the current model refuses, the driver sends those
  requests again and finalizes once more, in the same call;
- derived files that are damaged or missing (``output/stats.json``, an output file) are
  rewritten by finalizing again, never reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .acceptance import Acceptance, judge_stored
from .credentials import Credentials
from .errors import CorruptRunError
from .finalize import check_complete, finalize_run, read_output, response_of
from .prepare import prepare_run
from .store import RunStore

if TYPE_CHECKING:
    from .llm import LLM
    from .types import CuratorResponse


def finished_output(store: RunStore, manifest: dict[str, Any], llm: LLM) -> dict[str, Any] | None:
    """The stored output when it is complete, parsed by the same ``parse()`` and state from
    what the current acceptance rule makes of the stored answers (all of them accepted)."""
    try:
        output = read_output(store)
    except CorruptRunError:
        return None  # finalize rewrites it
    if (
        output is None
        or output.get("failed")
        or output.get("parse_fingerprint") != llm.parse_fingerprint()
    ):
        return None
    shards = [shard["name"] for shard in manifest["shards"]]
    if judge_stored(store, shards, Acceptance(llm)) != output.get("judged_fingerprint"):
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
    output = finished_output(store, manifest, llm)
    if output is not None:
        try:
            return response_of(store, manifest, output)
        except CorruptRunError:  # an output file is missing or damaged: finalize rewrites it
            pass
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
