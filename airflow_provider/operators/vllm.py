"""``CuratorVLLMOperator``: one offline shard on a GPU worker (``steps.run_offline``).

It is routed to GPU capacity by default: ``queue="gpu"`` (Celery workers started with
``airflow celery worker --queues gpu``), ``pool="gpu"`` (``airflow pools set gpu <GPUs> ...``;
``pool_slots`` = GPUs per task = ``tensor_parallel_size``), and any ``executor_config``, e.g. a
KubernetesExecutor ``pod_override`` asking for ``nvidia.com/gpu``::

    from kubernetes.client import models as k8s

    gpu_pod = k8s.V1Pod(spec=k8s.V1PodSpec(containers=[k8s.V1Container(
        name="base",
        resources=k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}),
    )]))
    CuratorVLLMOperator(..., executor_config={"pod_override": gpu_pod})

vLLM and Airflow rarely share one environment (their pins conflict), so ``python=`` runs the
step in another interpreter on the same worker (the GPU image's venv, which needs only
``curator-flows[vllm]``): the job goes to its stdin as JSON (credentials included: never on the
command line or in the environment), its stderr (vLLM's and the step's progress) goes to the
task log, its last stdout line is the result.

Invariants: a retry resumes at the last stored chunk of responses (see the offline runner);
killing the task kills the child process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from typing import TYPE_CHECKING, Any

from ..exceptions import raise_for
from .base import CuratorBaseOperator, check_llm_argument, run_uri_of

if TYPE_CHECKING:
    from airflow.sdk import Context

RESULT_PREFIX = "CURATOR_FLOWS_RESULT "
GPU_QUEUE = "gpu"
GPU_POOL = "gpu"
KILL_GRACE = 20.0

#: what the other interpreter runs (imports only curator_flows). Everything it does, reading
#: the job and building the LLM included, ends in one result line: the step's result, or an
#: error with its ``retryable`` (a library error's own flag; an LLM that cannot be imported or
#: built, or a missing curator_flows, is a configuration error: not retryable).
WORKER = f"""
import json, sys

def build_llm(job):
    from curator_flows import steps
    from curator_flows.errors import ConfigError
    if not job.get("llm"):
        return None
    try:
        return steps.build_llm(job["llm"], job.get("llm_kwargs"))
    except Exception as exc:
        if hasattr(exc, "retryable"):
            raise
        raise ConfigError(
            f"building llm={{job['llm']!r}} in {{sys.executable}} failed: "
            f"{{type(exc).__name__}}: {{exc}}"
        ) from exc

def main():
    from curator_flows import steps
    job = json.load(sys.stdin)
    return steps.run_offline(
        job["run_uri"], job["shard"], llm=build_llm(job), credentials=job["credentials"]
    )

try:
    result = main()
except Exception as exc:
    try:
        from curator_flows.errors import is_retryable
        retryable = is_retryable(exc)
    except ImportError:
        retryable = False
    error = {{"type": type(exc).__name__, "message": str(exc), "retryable": retryable}}
    print({RESULT_PREFIX!r} + json.dumps({{"error": error}}), flush=True)
    sys.exit(1)
print({RESULT_PREFIX!r} + json.dumps({{"result": result}}), flush=True)
"""


class CuratorVLLMOperator(CuratorBaseOperator):
    """Generate one shard of an offline (``backend="vllm"``) run on a GPU worker; returns its
    ``ShardResult``.

    :param run: the ``PrepareResult`` or its ``run_uri``.
    :param shard: the shard (``.expand(shard=prepare.output)``).
    :param llm: the run's LLM (an instance in-process only, or an import path), or ``None`` to
        rebuild it from the run manifest.
    :param python: run the step with this interpreter (the GPU venv) instead of in-process.
    :param env: extra environment variables for that interpreter (e.g. ``HF_HOME``).
    :param queue: default ``"gpu"``. :param pool: default ``"gpu"``.
    :param executor_config: e.g. ``{"pod_override": <V1Pod with nvidia.com/gpu limits>}``.
    """

    template_fields = ("run", "shard")
    ui_color = "#76b900"

    def __init__(
        self,
        *,
        run: Any,
        shard: str,
        llm: Any = None,
        llm_kwargs: dict[str, Any] | None = None,
        python: str | None = None,
        env: dict[str, str] | None = None,
        queue: str = GPU_QUEUE,
        pool: str = GPU_POOL,
        executor_config: dict[str, Any] | None = None,
        map_index_template: str | None = "{{ task.shard }}",
        **kwargs: Any,
    ) -> None:
        check_llm_argument(llm, llm_kwargs)
        if python and llm is not None and not isinstance(llm, str):
            raise ValueError(
                "with python=..., give llm as an import path (or None: rebuilt from the run "
                "manifest); an LLM instance cannot cross into another interpreter"
            )
        super().__init__(
            queue=queue,
            pool=pool,
            executor_config=executor_config,
            map_index_template=map_index_template,
            **kwargs,
        )
        self.run = run
        self.shard = shard
        self.llm = llm
        self.llm_kwargs = llm_kwargs
        self.python = python
        self.env = env
        self._child: subprocess.Popen | None = None

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:
        """``.partial()`` with the GPU pool as default too: the scheduler routes a mapped task
        by its partial arguments, and Airflow fills in ``queue`` from ``__init__``'s defaults
        but not ``pool``; an explicit ``pool`` or one in the DAG's ``default_args`` (merged by
        Airflow's ``partial``) still wins, as for a plain task."""
        partial = super().partial(**kwargs)
        if partial.kwargs.get("pool") is None:
            partial.kwargs["pool"] = GPU_POOL
        return partial

    def execute(self, context: Context) -> dict[str, Any]:
        from curator_flows import steps

        run_uri = run_uri_of(self.run)
        if self.python is None:
            result = self.step(
                steps.run_offline,
                run_uri,
                self.shard,
                llm=self.make_llm(self.llm, self.llm_kwargs),
                credentials=self.credentials(),
            )
        else:
            result = self.run_in_interpreter(run_uri)
        self.log.info(
            "shard %s: %d generated, %d failed in %.1fs",
            self.shard,
            result["succeeded"],
            result["failed"],
            result["elapsed"],
        )
        return dict(result)

    def run_in_interpreter(self, run_uri: str) -> dict[str, Any]:
        """``steps.run_offline`` in ``self.python``; its errors classified like in-process."""
        from curator_flows.errors import ConfigError, CuratorFlowsError

        credentials = self.credentials()
        job = {
            "run_uri": run_uri,
            "shard": self.shard,
            "llm": self.llm,
            "llm_kwargs": self.llm_kwargs,
            "credentials": {
                "api_key": credentials.secret(),
                "base_url": credentials.base_url,
                "storage_options": credentials.storage_options,
            },
        }
        env = {**os.environ, **(self.env or {})}
        self.log.info("running shard %s with %s", self.shard, self.python)
        try:
            child = subprocess.Popen(
                [self.python, "-c", WORKER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise_for(
                ConfigError(
                    f"python={self.python!r} cannot be started ({type(exc).__name__}: {exc}): "
                    "point it at the GPU venv's interpreter"
                )
            )
        self._child = child
        relay = threading.Thread(target=self._relay, args=(child.stderr,), daemon=True)
        relay.start()
        outcome: dict[str, Any] | None = None
        try:
            assert child.stdin is not None and child.stdout is not None
            try:
                child.stdin.write(json.dumps(job))
                child.stdin.close()
            except BrokenPipeError:  # it ended before reading the job: no result below
                pass
            for line in child.stdout:
                if line.startswith(RESULT_PREFIX):
                    outcome = json.loads(line[len(RESULT_PREFIX) :])
                elif line.strip():
                    self.log.info("%s", line.rstrip())
            code = child.wait()
        finally:
            relay.join(timeout=5)
            self._child = None
        if outcome and "result" in outcome:
            return outcome["result"]
        if outcome and "error" in outcome:
            error = outcome["error"]
            raise_for(
                CuratorFlowsError(
                    f"{error['type']}: {error['message']}", retryable=bool(error["retryable"])
                )
            )
        raise CuratorFlowsError(
            f"shard {self.shard}: the vLLM worker ({self.python}) exited with code {code} "
            "without a result (killed? out of memory?); a retry resumes at the last stored "
            "chunk",
            retryable=True,
        )

    def _relay(self, stream: Any) -> None:
        for line in stream:
            if line.strip():
                self.log.info("%s", line.rstrip())

    def on_kill(self) -> None:
        child = self._child
        if child is None or child.poll() is not None:
            return
        try:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
