"""``CuratorBatchSensor``: wait until one shard's provider batch has ended (``poke``,
``reschedule`` or deferrable). It never collects: ``CuratorCollectOperator`` does.

Outcomes, the same as the trigger's (:mod:`airflow_provider.batch_watch`): ended or expired →
success (returns the batch's small state); failed, cancelled, the ``batch_timeout`` deadline →
their own exception types; a shard without a batch at the provider (``resume``) →
:class:`~airflow_provider.exceptions.CuratorPermanentError` (a sensor never submits, so waiting
cannot end it); a poll error → tolerated in poke/reschedule mode until the deadline when
transient, raised at once when permanent.

Invariant: the sensor's own ``timeout`` bounds a deferral as it bounds pokes (the deferral's
``timeout``), next to ``batch_timeout``, which counts from the batch's submission.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from ..compat import conf
from ..exceptions import CuratorPermanentError
from ..operators.base import CuratorBaseOperator, run_uri_of
from ..operators.batch import (
    batch_trigger,
    cancel_batches,
    end_of_wait,
    log_deferral,
    watch_once,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


class CuratorBatchSensor(BaseSensorOperator, CuratorBaseOperator):
    """Wait for the current batch of ``shard``.

    :param run: the ``PrepareResult`` or its ``run_uri``.
    :param shard: the shard (``.expand(shard=prepare.output)``).
    :param deferrable: wait in the triggerer instead of poking (default: ``[operators]
        default_deferrable``, ``False`` unless set).
    :param batch_timeout: seconds (or a ``timedelta``) after the campaign's first submit before
        :class:`~airflow_provider.exceptions.CuratorBatchTimeout`.
    :param cancel_on_timeout: cancel the run's live batches at the deadline.
    :param cancel_on_kill: cancel them when the task is killed: a poking task's process gets
        ``SIGTERM`` (marked failed, cleared, ``execution_timeout``), or a deferred task is no
        longer deferred when Airflow calls the trigger's ``on_kill`` (a triggerer restart or a
        move to another triggerer leaves them running; see
        :mod:`airflow_provider.triggers.batch`). Between reschedule-mode pokes no process runs:
        nothing is cancelled then.
    :param max_poll_errors: (deferrable) consecutive transient poll errors tolerated.

    ``poke_interval``, ``mode`` (``poke`` | ``reschedule``) and ``timeout`` are the usual sensor
    arguments.
    """

    template_fields = ("run", "shard", "batch_timeout")
    ui_color = "#e3d5ff"

    def __init__(
        self,
        *,
        run: Any,
        shard: str,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        batch_timeout: float | timedelta | str | None = None,
        cancel_on_timeout: bool = True,
        cancel_on_kill: bool = True,
        max_poll_errors: int = 3,
        map_index_template: str | None = "{{ task.shard }}",
        **kwargs: Any,
    ) -> None:
        super().__init__(map_index_template=map_index_template, **kwargs)
        self.run = run
        self.shard = shard
        self.deferrable = deferrable
        self.batch_timeout = batch_timeout
        self.cancel_on_timeout = cancel_on_timeout
        self.cancel_on_kill = cancel_on_kill
        self.max_poll_errors = max_poll_errors

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        log_deferral(self, [self.shard])
        self.defer(
            trigger=batch_trigger(self, run_uri_of(self.run), [self.shard], self.poke_interval),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        run_uri = run_uri_of(self.run)
        event = watch_once(self, run_uri, [self.shard], self.credentials())
        if event is None:
            return False
        return PokeReturnValue(True, self.outcome(event))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        return self.outcome(event)

    def outcome(self, event: dict[str, Any]) -> dict[str, Any]:
        """The shard's small state for ``ended`` / ``expired`` / ``resume``; else raise."""
        self.log.info("shard %s: %s (%s)", self.shard, event["kind"], event.get("message"))
        error = end_of_wait(self, event)
        if error is not None:
            raise error
        if event["kind"] == "resume":
            raise CuratorPermanentError(
                f"shard {self.shard} of {event['run_uri']} has no batch at the provider: the "
                "sensor only waits; submit it first (CuratorSubmitBatchOperator upstream)"
            )
        state = event["shards"].get(self.shard, {})
        return {"run_uri": event["run_uri"], "shard": self.shard, "outcome": event["kind"], **state}

    def on_kill(self) -> None:
        """Airflow is killing the poking task (``SIGTERM``, ``execution_timeout``): cancel the
        run's live batches (``cancel_on_kill``)."""
        if self.cancel_on_kill:
            cancel_batches(self, run_uri_of(self.run))
