"""Batch steps as operators, and the wait loop they share with ``CuratorOperator``.

The loop, per task: ``steps.advance`` every shard (submit, or re-attach; collect what ended;
resubmit what expired) → wait for the live batches (``defer()`` to
:class:`~airflow_provider.triggers.batch.CuratorBatchTrigger`, or, with ``deferrable=False``,
a reschedule-mode poke) → on the one event: advance again, wait again while a new round runs,
then finish.

Invariants:
- a retry of any of these tasks resumes from the run directory: a shard that has a batch is
  never submitted again, a stored response is never requested again, whatever XCom holds;
- failed / cancelled / timed-out batches end the task with their own exception type after the
  batches that ended are collected (every paid result is stored);
- ``cancel_on_kill``: a kill cancels the run's live batches; a restart of the triggerer does
  not. What counts as a kill in Airflow 3.3: on a worker, the task process's ``SIGTERM`` (a user
  marks the running task failed or succeeded, or clears it; ``execution_timeout``; a worker's
  graceful shutdown forwards its ``SIGTERM`` too) calls the operator's ``on_kill``; while
  deferred, the trigger's ``on_kill`` decides (it cancels only when the task is no longer
  deferred: see :mod:`airflow_provider.triggers.batch`). A task waiting between two
  reschedule-mode pokes runs no process, so marking it failed then cancels nothing (use
  ``curator-flows cancel``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from ..batch_watch import BatchWatch
from ..compat import conf
from ..exceptions import CuratorBatchCancelled, wait_error
from .base import CuratorBaseOperator, run_uri_of

if TYPE_CHECKING:
    from airflow.sdk import Context

    from ..triggers.batch import CuratorBatchTrigger

DEFAULT_POLL_INTERVAL = 60.0


def seconds(value: Any) -> float | None:
    """``value`` (seconds, a ``timedelta``, a rendered template string, ``None``) in seconds."""
    if value is None or value in ("", "None"):  # "None": a template that rendered nothing
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


# -------------------------------------------------------------------------- shared by every wait
# ``task`` is a CuratorBaseOperator with the wait options ``batch_timeout``, ``max_poll_errors``,
# ``cancel_on_kill`` and ``cancel_on_timeout`` (the batch operators and CuratorBatchSensor).


def batch_trigger(
    task: Any, run_uri: str, shards: list[str], poll_interval: float
) -> CuratorBatchTrigger:
    """The trigger a task defers to while ``shards``' batches run."""
    from ..hooks.embedded import embedded_identity
    from ..triggers.batch import CuratorBatchTrigger

    return CuratorBatchTrigger(
        run_uri,
        shards,
        conn_id=task.conn_id,
        embedded_simulator=embedded_identity(),
        poll_interval=poll_interval,
        timeout=seconds(task.batch_timeout),
        max_poll_errors=task.max_poll_errors,
        cancel_on_kill=task.cancel_on_kill,
        cancel_on_timeout=task.cancel_on_timeout,
    )


def log_deferral(task: Any, shards: list[str]) -> None:
    """Say that the task defers and whether a triggerer runs to resume it (a warning when the
    API server's health check says none does: see :mod:`airflow_provider.triggerer_health`)."""
    from ..triggerer_health import deferral_note, triggerer_health

    warn, note = deferral_note(triggerer_health())
    (task.log.warning if warn else task.log.info)(
        "deferring until the batches of shard(s) %s end: %s", ", ".join(shards), note
    )


def watch_once(task: Any, run_uri: str, shards: list[str], credentials: Any) -> dict | None:
    """One round of status requests (a poke): the terminal event, or ``None`` to wait on."""
    from curator_flows import steps

    watch = BatchWatch(
        run_uri,
        shards,
        timeout=seconds(task.batch_timeout),
        max_poll_errors=task.max_poll_errors,
    )
    for shard in shards:
        try:
            watch.observe(steps.poll(run_uri, shard, credentials=credentials))
        except Exception as exc:  # noqa: BLE001 - the watch classifies it
            task.log.warning("polling shard %s failed: %s", shard, exc)
            watch.poll_failed(shard, exc)
            if watch.failure is not None:
                break
    if watch.anchor is None and watch.timeout is not None and watch.failure is None:
        # every poll failed: the poke's error count starts again at the next poke, so only the
        # deadline (anchored in the run directory) bounds the wait
        watch.anchor = stored_anchor(task, run_uri, shards, credentials)
    return watch.outcome()


def stored_anchor(task: Any, run_uri: str, shards: list[str], credentials: Any) -> float | None:
    """When the watched campaign's first batch was submitted, from the run directory alone
    (``None``: not submitted, or the directory cannot be read now)."""
    from curator_flows import steps

    try:
        status = steps.status(run_uri, shards, credentials=credentials)
    except Exception as exc:  # noqa: BLE001 - the next poke tries again
        task.log.warning("reading the batch submit times of %s failed: %s", run_uri, exc)
        return None
    times = [s["batch"]["submitted_at"] for s in status["shards"] if s.get("batch")]
    times = [t for t in times if t]
    return min(times) if times else None


def stored_counts(task: Any, run_uri: str, shard: str, credentials: Any) -> dict | None:
    """What the run directory holds for ``shard`` (``steps.status``; ``None``: unreadable now)."""
    from curator_flows import steps

    try:
        return steps.status(run_uri, shard, credentials=credentials)["shards"][0]
    except Exception as exc:  # noqa: BLE001 - only a log line depends on it
        task.log.warning("reading the stored counts of shard %s failed: %s", shard, exc)
        return None


def shard_line(state: dict[str, Any], stored: dict[str, Any] | None) -> str:
    """One log line about a shard after ``steps.advance``: its batch, what this call did, and
    (``stored``, for a shard that needs nothing more) what its responses hold: a re-run that
    finds every response stored says so instead of "0 succeeded"."""
    batch = f"batch {state['batch_id']}" if state.get("batch_id") else "no batch"
    if state.get("status"):
        batch += f" {state['status']}"
    counts = state.get("request_counts") or {}
    if counts and not state["done"]:
        batch += " (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"
    did = []
    if state.get("created"):
        did.append("created now")
    if state.get("reattached"):
        did.append("re-attached")
    if state.get("written"):
        did.append(f"{state['written']} results collected now")
    doing = f"; {', '.join(did)}" if did else ""
    if stored is None:
        if state["done"]:
            return f"shard {state['shard']}: {state['state']} ({batch}{doing})"
        return f"shard {state['shard']}: waiting for {batch}{doing}"
    return (
        f"shard {state['shard']}: {state['state']}: {stored['succeeded']} succeeded, "
        f"{stored['failed']} failed, {stored['pending']} pending of {stored['requests']} "
        f"requests stored (${stored['cost']:.4f}; {batch}{doing})"
    )


def cancel_batches(task: Any, run_uri: str, credentials: Any = None) -> bool:
    """Cancel the run's live batches; ``True`` when every cancel request worked (never
    raises: it runs from kills and deadlines)."""
    from curator_flows import steps

    try:
        result = steps.cancel(run_uri, credentials=credentials or task.credentials())
    except Exception as exc:  # noqa: BLE001 - never raised from a kill
        task.log.error("cancelling the batches of %s failed: %s", run_uri, exc)
        return False
    task.log.warning("cancelled the live batches of %s: %s", run_uri, result["batches"])
    return not result["errors"]


def end_of_wait(task: Any, event: dict[str, Any], credentials: Any = None) -> Exception | None:
    """The exception a terminal event ends the task with (``None``: go on); a ``timeout``
    the trigger did not settle cancels the batches first when ``cancel_on_timeout``."""
    cancelled = event.get("cancelled")
    if event["kind"] == "timeout" and cancelled is None and task.cancel_on_timeout:
        cancelled = cancel_batches(task, event["run_uri"], credentials)
    return wait_error(event, cancelled=bool(cancelled))


class BatchWaitMixin:
    """Waiting for a run's batches, deferrable or in reschedule mode. The operator provides
    ``deferrable``, ``poll_interval``, ``batch_timeout``, ``max_poll_errors``,
    ``cancel_on_kill``, ``cancel_on_timeout``, ``retry_failed`` and :meth:`batch_llm` /
    :meth:`batches_done`."""

    deferrable: bool
    poll_interval: Any
    batch_timeout: Any
    max_poll_errors: int
    cancel_on_kill: bool
    cancel_on_timeout: bool
    retry_failed: bool
    _run_uri: str | None = None
    _wait_hint: float | None = None

    @property
    def _last_states(self) -> dict[str, dict[str, Any]]:
        """The latest ``BatchShardState`` of each shard this task advanced."""
        states = self.__dict__.get("_shard_states")
        if states is None:
            states = self.__dict__["_shard_states"] = {}
        return states

    # ------------------------------------------------------------------ operator hooks
    def batch_llm(self) -> Any:
        """The LLM for collect / submit (``None``: rebuilt from the run manifest)."""
        return None

    def batches_done(self, context: Context, run_uri: str, llm: Any, credentials: Any) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ the loop
    def run_batches(
        self, context: Context, run_uri: str, shards: list[str], llm: Any, credentials: Any
    ) -> Any:
        """Drive ``shards`` to done (this call may defer or reschedule the task)."""
        self._run_uri = run_uri
        if self.deferrable:
            live = self.advance_shards(run_uri, shards, llm, credentials)
            if live:
                self.wait_for(run_uri, live)
            return self.batches_done(context, run_uri, llm, credentials)
        event = watch_once(self, run_uri, shards, credentials)
        if event is None:
            self.reschedule()
        return self.on_batch_event(context, event, llm, credentials)

    def advance_shards(
        self, run_uri: str, shards: list[str], llm: Any, credentials: Any
    ) -> list[str]:
        """One ``steps.advance`` per shard; the shards that still have a live batch."""
        from curator_flows import steps

        live = []
        for shard in shards:
            state = self.step(
                steps.advance,
                run_uri,
                shard,
                llm=llm,
                credentials=credentials,
                retry_failed=self.retry_failed,
            )
            stored = None
            if state["done"]:
                stored = stored_counts(self, run_uri, shard, credentials)
            self.log.info("%s", shard_line(state, stored))
            self._last_states[shard] = dict(state)
            if state["state"] == "cancelled":
                raise CuratorBatchCancelled(
                    f"shard {shard} of {run_uri} is cancelled (cancel_on_kill, "
                    "`curator-flows cancel` or a deadline): set retry_failed=True on the task "
                    "to start a new campaign for its unfinished requests"
                )
            if not state["done"]:
                live.append(shard)
                self._wait_hint = state["wait_seconds"] or self._wait_hint
        return live

    def interval(self) -> float:
        return seconds(self.poll_interval) or self._wait_hint or DEFAULT_POLL_INTERVAL

    def wait_for(self, run_uri: str, live: list[str]) -> NoReturn:
        """Defer to the trigger (or reschedule) until the live batches end."""
        if not self.deferrable:
            self.reschedule()
        log_deferral(self, live)
        self.defer(
            trigger=batch_trigger(self, run_uri, live, self.interval()),
            method_name="execute_complete",
        )

    def reschedule(self) -> NoReturn:
        from airflow.sdk import timezone

        from ..compat import AirflowRescheduleException

        raise AirflowRescheduleException(timezone.utcnow() + timedelta(seconds=self.interval()))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after the trigger's one event."""
        return self.on_batch_event(context, event)

    def on_batch_event(
        self, context: Context, event: dict[str, Any], llm: Any = None, credentials: Any = None
    ) -> Any:
        """Act on a terminal outcome: raise its exception, or collect, resubmit and go on."""
        kind, run_uri = event["kind"], event["run_uri"]
        self._run_uri = run_uri
        self.log.info("batches of %s: %s (%s)", run_uri, kind, event.get("message"))
        if kind == "error":
            raise wait_error(event)
        credentials = credentials if credentials is not None else self.credentials()
        llm = llm if llm is not None else self.batch_llm()
        error = end_of_wait(self, event, credentials)
        if error is not None:
            self.collect_ended(run_uri, event, llm, credentials)
            raise error
        live = self.advance_shards(run_uri, list(event["shards"]), llm, credentials)
        if live:
            self.wait_for(run_uri, live)
        return self.batches_done(context, run_uri, llm, credentials)

    def collect_ended(
        self, run_uri: str, event: dict[str, Any], llm: Any, credentials: Any
    ) -> None:
        """Store the results of the batches that ended (best effort: the task fails anyway)."""
        from curator_flows import steps

        for shard, state in event["shards"].items():
            if not state.get("done"):
                continue
            try:
                steps.collect(run_uri, shard, llm=llm, credentials=credentials)
            except Exception as exc:  # noqa: BLE001 - logged; the outcome's error follows
                self.log.warning("collecting shard %s failed: %s", shard, exc)

    def on_kill(self) -> None:
        """Airflow is killing the running task (its process got ``SIGTERM``, or
        ``execution_timeout`` passed): cancel the live batches of its run
        (``cancel_on_kill``)."""
        if self.cancel_on_kill and self._run_uri:
            cancel_batches(self, self._run_uri)


class BatchOptionsMixin:
    """The batch-wait arguments, stored the same way by every batch operator."""

    def set_batch_options(
        self,
        *,
        deferrable: bool,
        poll_interval: Any,
        batch_timeout: Any,
        max_poll_errors: int,
        cancel_on_kill: bool,
        cancel_on_timeout: bool,
        retry_failed: bool,
    ) -> None:
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.batch_timeout = batch_timeout
        self.max_poll_errors = max_poll_errors
        self.cancel_on_kill = cancel_on_kill
        self.cancel_on_timeout = cancel_on_timeout
        self.retry_failed = retry_failed


class CuratorSubmitBatchOperator(CuratorBaseOperator):
    """Create (or re-attach to) the provider batch of one shard; returns its
    ``BatchShardState`` (batch id, status, counts).

    :param run: the run (``PrepareResult`` or its ``run_uri``).
    :param shard: the shard to submit (``.expand(shard=prepare.output)``).
    :param llm: the run's LLM, or ``None`` to rebuild it from the run manifest.
    :param retry_failed: also start a new campaign for requests that failed finally.
    """

    template_fields = ("run", "shard")
    ui_color = "#e5dbff"

    def __init__(
        self,
        *,
        run: Any,
        shard: str,
        llm: Any = None,
        llm_kwargs: dict[str, Any] | None = None,
        retry_failed: bool = False,
        map_index_template: str | None = "{{ task.shard }}",
        **kwargs: Any,
    ) -> None:
        super().__init__(map_index_template=map_index_template, **kwargs)
        self.run = run
        self.shard = shard
        self.llm = llm
        self.llm_kwargs = llm_kwargs
        self.retry_failed = retry_failed

    def execute(self, context: Context) -> dict[str, Any]:
        from curator_flows import steps

        run_uri = run_uri_of(self.run)
        state = self.step(
            steps.submit,
            run_uri,
            self.shard,
            llm=self.make_llm(self.llm, self.llm_kwargs),
            credentials=self.credentials(),
            retry_failed=self.retry_failed,
        )
        self.log.info(
            "shard %s: %s batch %s (%s, %d requests)",
            self.shard,
            "created" if state["created"] else "re-attached to" if state["reattached"] else "has",
            state["batch_id"],
            state["state"],
            state["requests"],
        )
        if state["state"] == "cancelled":
            raise CuratorBatchCancelled(
                f"shard {self.shard} of {run_uri} is cancelled: set retry_failed=True to start "
                "a new campaign"
            )
        return dict(state)


class CuratorCollectOperator(BatchOptionsMixin, BatchWaitMixin, CuratorBaseOperator):
    """Collect one shard's ended batch into the run directory; requests the batch did not
    finish (expired, cancelled at the provider) go into a new round that this task waits for,
    so the shard is complete when the task succeeds. Returns the shard's ``BatchShardState``.

    Waiting is deferred with ``deferrable=True`` (default: ``[operators] default_deferrable``),
    else in reschedule-mode pokes every ``poll_interval`` seconds; ``batch_timeout`` counts
    from the campaign's first submit.
    """

    template_fields = ("run", "shard", "poll_interval", "batch_timeout")
    ui_color = "#d0bfff"

    def __init__(
        self,
        *,
        run: Any,
        shard: str,
        llm: Any = None,
        llm_kwargs: dict[str, Any] | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float | str | None = None,
        batch_timeout: float | timedelta | str | None = None,
        max_poll_errors: int = 3,
        cancel_on_kill: bool = True,
        cancel_on_timeout: bool = True,
        retry_failed: bool = False,
        map_index_template: str | None = "{{ task.shard }}",
        **kwargs: Any,
    ) -> None:
        super().__init__(map_index_template=map_index_template, **kwargs)
        self.run = run
        self.shard = shard
        self.llm = llm
        self.llm_kwargs = llm_kwargs
        self.set_batch_options(
            deferrable=deferrable,
            poll_interval=poll_interval,
            batch_timeout=batch_timeout,
            max_poll_errors=max_poll_errors,
            cancel_on_kill=cancel_on_kill,
            cancel_on_timeout=cancel_on_timeout,
            retry_failed=retry_failed,
        )

    def batch_llm(self) -> Any:
        return self.make_llm(self.llm, self.llm_kwargs)

    def execute(self, context: Context) -> Any:
        return self.run_batches(
            context, run_uri_of(self.run), [self.shard], self.batch_llm(), self.credentials()
        )

    def batches_done(self, context: Context, run_uri: str, llm: Any, credentials: Any) -> Any:
        """The shard's last ``BatchShardState`` (``done``: nothing more to collect)."""
        return self._last_states[self.shard]
