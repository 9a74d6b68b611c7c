"""``CuratorBatchTrigger``: waits in the triggerer until a run's batches end, then fires once.

Invariants:
- the event loop is never blocked: the connection is fetched with the async API, and every
  ``steps.poll`` (a status request plus small run-directory reads) and ``steps.cancel`` runs in
  a thread (``asyncio.to_thread``);
- the trigger never downloads results (the resumed task collects them); it writes to the run
  directory only through the steps it calls: each ``steps.poll`` saves the shard's batch record
  (status, request counts, end and poll times, as any poll does) and ``steps.cancel`` writes the
  run's cancel flag;
- it yields exactly one event, then returns (:mod:`airflow_provider.batch_watch` decides which);
- its deadline is wall-clock, ``timeout`` seconds after the current campaign's first batch was
  submitted (a time stored in the run), so a triggerer restart does not move it;
- it serialises to a handful of JSON values: a run URI, shard names, a connection id and
  settings; never a key;
- ``cancel_on_kill`` cancels the run's batches only when the task is no longer deferred (see
  :meth:`CuratorBatchTrigger.on_kill`): a triggerer restart or a move to another triggerer
  leaves them running; before Airflow 3.3 (no ``on_kill``) it cannot, and the trigger says so
  in one log line when it starts (:func:`airflow_provider.compat.cancel_on_kill_note`);
- with the embedded simulator, it runs only in the process whose simulator holds the batches
  (``dag.test()``): anywhere else it ends at once with a permanent error saying why, instead of
  a provider 404 for a batch that simulator never saw.

What Airflow 3.3 does (``airflow/jobs/triggerer_job_runner.py``): a triggerer calls a
trigger's ``on_kill`` when it cancels the trigger with its "user action" message, which it does
for every trigger the database no longer assigns to it. That is the case when a user marks the
deferred task failed or succeeded or clears it (the trigger row loses its task), and also when
the trigger was reassigned to another triggerer (this one missed its heartbeats). A triggerer
that shuts down or restarts cancels its triggers without that message (no ``on_kill``), and a
deferral that times out (``timeout_after``) is not a kill either. Only the task's state tells a
kill from a reassignment: it stays ``deferred`` while another triggerer watches the batches.
A task cleared while deferred whose new try already deferred again looks the same (``deferred``,
on the same batches: cancelling them would end the new try), so neither is cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from curator_flows import steps

from ..batch_watch import BatchWatch
from ..compat import cancel_on_kill_note
from ..hooks.curator import CuratorHook

#: seconds a deadline's cancel may take before the trigger gives up on it
CANCEL_TIMEOUT = 60.0
#: seconds kept free under the triggerer's ``[triggerer] on_kill_timeout`` for the rest of
#: ``on_kill`` (the task-state lookup, the log lines)
KILL_MARGIN = 5.0
#: seconds the task-state lookup of ``on_kill`` may take (within :data:`KILL_MARGIN`)
STATE_TIMEOUT = 3.0


def in_daemon_thread(function: Any, /, **kwargs: Any) -> concurrent.futures.Future:
    """``function(**kwargs)`` in a daemon thread of its own: a call that never returns is
    abandoned at its timeout, and nothing (an event loop's shutdown, the interpreter's exit)
    waits for it, unlike ``asyncio.to_thread``'s shared executor."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def call() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function(**kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
            future.set_exception(exc)

    threading.Thread(target=call, name="curator-task-state", daemon=True).start()
    return future


def kill_cancel_timeout() -> float:
    """Seconds ``on_kill``'s cancel may take: the triggerer's ``[triggerer] on_kill_timeout``
    (30 s by default; Airflow abandons ``on_kill`` after it) less :data:`KILL_MARGIN`, so the
    trigger logs the outcome itself instead of being cut off (25 s by default)."""
    from ..compat import conf

    bound = conf.getfloat("triggerer", "on_kill_timeout", fallback=30.0)
    return max(1.0, bound - KILL_MARGIN)


class CuratorBatchTrigger(BaseTrigger):
    """Poll the batches of ``shards`` of the run at ``run_uri`` until they end.

    :param run_uri: the run (``PrepareResult["run_uri"]``).
    :param shards: the shards whose current batches to watch.
    :param conn_id: the ``curator`` connection (the key is looked up in the triggerer).
    :param embedded_simulator: the identity of the deferring task's embedded simulator
        (:func:`~airflow_provider.hooks.embedded.embedded_identity`), if one ran there.
    :param poll_interval: seconds between two rounds of status requests.
    :param timeout: seconds after the campaign's first submit before giving up (``None``: no
        deadline).
    :param max_poll_errors: consecutive transient poll errors tolerated.
    :param cancel_on_kill: cancel the run's live batches when the deferred task is killed
        (marked failed or succeeded, cleared), not when the trigger merely moves (see
        :meth:`on_kill`).
    :param cancel_on_timeout: cancel them when the deadline passes.
    """

    def __init__(
        self,
        run_uri: str,
        shards: list[str],
        *,
        conn_id: str = "curator_default",
        embedded_simulator: str | None = None,
        poll_interval: float = 60.0,
        timeout: float | None = None,
        max_poll_errors: int = 3,
        cancel_on_kill: bool = True,
        cancel_on_timeout: bool = True,
    ) -> None:
        super().__init__()
        self.run_uri = run_uri
        self.shards = list(shards)
        self.conn_id = conn_id
        self.embedded_simulator = embedded_simulator
        self.poll_interval = float(poll_interval)
        self.timeout = None if timeout is None else float(timeout)
        self.max_poll_errors = int(max_poll_errors)
        self.cancel_on_kill = cancel_on_kill
        self.cancel_on_timeout = cancel_on_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "run_uri": self.run_uri,
                "shards": self.shards,
                "conn_id": self.conn_id,
                "embedded_simulator": self.embedded_simulator,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "max_poll_errors": self.max_poll_errors,
                "cancel_on_kill": self.cancel_on_kill,
                "cancel_on_timeout": self.cancel_on_timeout,
            },
        )

    def _hook(self) -> CuratorHook:
        return CuratorHook(self.conn_id)

    async def _embedded_elsewhere(self, hook: CuratorHook) -> Exception | None:
        """The error of an embedded-simulator connection in a process whose simulator did not
        see the batches (``None``: not embedded, or the same process as the task)."""
        from ..hooks.embedded import (
            LOST_BATCH,
            embedded_identity,
            is_embedded_connection,
        )

        if not is_embedded_connection(await hook.aconnection()):
            return None
        here = embedded_identity()
        if here is not None and here == self.embedded_simulator:
            return None
        from curator_flows.errors import ConfigError

        return ConfigError(
            f"the batches of {self.run_uri} were submitted to the embedded simulator "
            f"{self.embedded_simulator or '(of another process)'}, and this trigger runs in "
            f"process {os.getpid()}: {LOST_BATCH}"
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        if self.cancel_on_kill and (note := cancel_on_kill_note(self.run_uri)):
            self.log.warning(note)
        watch = BatchWatch(
            self.run_uri, self.shards, timeout=self.timeout, max_poll_errors=self.max_poll_errors
        )
        try:
            hook = self._hook()
            elsewhere = await self._embedded_elsewhere(hook)
            if elsewhere is not None:
                raise elsewhere
            credentials = await hook.acredentials()
        except Exception as exc:  # noqa: BLE001 - reported as the one terminal event
            watch.fail(exc)
            yield TriggerEvent(watch.outcome())
            return
        while True:
            for shard in watch.pending():
                try:
                    state = await self._poll(shard, credentials)
                except Exception as exc:  # noqa: BLE001 - counted; the watch decides
                    self.log.warning("polling shard %s failed: %s", shard, exc)
                    watch.poll_failed(shard, exc)
                    if watch.failure is not None:
                        break
                else:
                    watch.observe(state)
                    self.log.info(
                        "shard %s: batch %s is %s %s",
                        shard,
                        state.get("batch_id"),
                        state.get("status"),
                        state.get("request_counts") or "",
                    )
            event = watch.outcome()
            if event is not None:
                if event["kind"] == "timeout":
                    event["cancelled"] = self.cancel_on_timeout and await self._cancel(
                        credentials, CANCEL_TIMEOUT
                    )
                yield TriggerEvent(event)
                return
            await asyncio.sleep(watch.sleep_seconds(self.poll_interval))

    async def _poll(self, shard: str, credentials: Any) -> dict[str, Any]:
        """One ``steps.poll`` (a status request and small reads), in a thread."""
        return await asyncio.to_thread(steps.poll, self.run_uri, shard, credentials=credentials)

    async def _cancel(self, credentials: Any, timeout: float) -> bool:
        """Cancel every live batch of the run (in a thread, given up after ``timeout`` seconds,
        the connection lookup included); ``True`` when it worked."""

        async def cancel() -> Any:
            nonlocal credentials
            if credentials is None:
                credentials = await self._hook().acredentials()
            return await asyncio.to_thread(steps.cancel, self.run_uri, credentials=credentials)

        try:
            result = await asyncio.wait_for(cancel(), timeout)
        except TimeoutError:
            self.log.error(
                "cancelling the batches of %s did not finish within %.0fs: check them with "
                "`curator-flows status %s`",
                self.run_uri,
                timeout,
                self.run_uri,
            )
            return False
        except Exception as exc:  # noqa: BLE001 - reported, never raised from a kill
            self.log.error("cancelling the batches of %s failed: %s", self.run_uri, exc)
            return False
        self.log.warning(
            "cancelled the batches of %s at %s: %s",
            self.run_uri,
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(result["cancelled_at"])),
            result["batches"],
        )
        return not result["errors"]

    async def task_state(self) -> str | None:
        """The current state of the deferred task (Airflow's task-states API, in a thread,
        within :data:`STATE_TIMEOUT` seconds); ``None`` when it cannot be read."""
        ti = getattr(self, "task_instance", None)
        if ti is None:
            return None
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        try:
            states = await asyncio.wait_for(
                asyncio.wrap_future(
                    in_daemon_thread(
                        RuntimeTaskInstance.get_task_states,
                        dag_id=ti.dag_id,
                        task_ids=[ti.task_id],
                        run_ids=[ti.run_id],
                        map_index=ti.map_index,
                    )
                ),
                STATE_TIMEOUT,
            )
        except Exception as exc:  # noqa: BLE001 - an unknown state; on_kill decides
            self.log.warning("reading the state of task %s failed: %s", ti.task_id, exc)
            return None
        key = (
            ti.task_id
            if ti.map_index is None or ti.map_index < 0
            else (f"{ti.task_id}_{ti.map_index}")
        )
        state = (states.get(ti.run_id) or {}).get(key)
        return None if state is None else str(getattr(state, "value", state))

    async def on_kill(self) -> None:
        """Airflow cancelled this trigger on a user action (see the module docstring): cancel
        the run's live batches (``cancel_on_kill``) unless the task is still ``deferred``,
        which means another triggerer now runs this trigger. A state that cannot be read
        counts as a kill (Airflow reported a user action; a wrong cancel ends the task with
        ``CuratorBatchCancelled``, whose finished results are collected)."""
        if not self.cancel_on_kill:
            return
        state = await self.task_state()
        if state == "deferred":
            self.log.info(
                "the task is deferred: either this trigger moved to another triggerer, or the "
                "task was cleared and its new try already waits on the same batches of %s; "
                "either way another trigger watches them (not cancelled)",
                self.run_uri,
            )
            return
        self.log.warning("the task was killed (state %s): cancelling its batches", state)
        await self._cancel(None, kill_cancel_timeout())
