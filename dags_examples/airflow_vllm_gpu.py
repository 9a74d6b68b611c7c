"""Airflow: recipes generated offline with vLLM on GPU workers.

    cuisines (an API model, through the ``curator_default`` connection)
      → prepare_recipes (CPU worker: renders the requests)
      → generate (one mapped CuratorVLLMOperator per shard: queue "gpu", pool "gpu",
                  a KubernetesExecutor pod_override asking for nvidia.com/gpu)
      → publish_recipes (CPU worker)

Only ``generate`` needs a GPU and vLLM. vLLM and Airflow pin conflicting packages, so the GPU
step can run in the GPU image's own interpreter: set ``CURATOR_VLLM_PYTHON`` (e.g.
``/opt/vllm/bin/python``, an environment with ``curator-flows[vllm]``); unset, it runs in the
worker's process. ``CURATOR_VLLM_MODEL`` picks the model (a Hugging Face id or a local
directory), ``CURATOR_VLLM_LLM`` the generator class (default the recipes of
``dags_examples/generators.py``). The recipe LLM is given as an import path, so no task needs
vLLM to build it.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import dag

from airflow_provider import (
    CuratorFinalizeOperator,
    CuratorOperator,
    CuratorPrepareOperator,
    CuratorVLLMOperator,
)
from dags_examples.generators import CuisineGenerator

ROOT = os.environ.get("CURATOR_EXAMPLES_ROOT") or str(Path.home() / "curator-flows" / "airflow")
MODEL = os.environ.get("CURATOR_VLLM_MODEL", "meta-llama/Llama-3.1-8B-Instruct")
#: the recipe generator run on the GPU (an import path: built on the workers, never here)
RECIPE_LLM = os.environ.get("CURATOR_VLLM_LLM", "dags_examples.generators:RecipeGenerator")
VLLM_PYTHON = os.environ.get("CURATOR_VLLM_PYTHON") or None
#: extra environment of the GPU step (JSON), e.g. {"HF_HOME": "/models/hf"}
VLLM_ENV = json.loads(os.environ.get("CURATOR_VLLM_ENV") or "{}")
#: engine settings of the GPU step (JSON over these defaults)
VLLM_PARAMS = {
    "tensor_parallel_size": 1,
    "max_model_length": 4096,
    "max_tokens": 512,
    "batch_size": 256,
    "shard_size": 5000,
    **json.loads(os.environ.get("CURATOR_VLLM_PARAMS") or "{}"),
}
GPUS = int(VLLM_PARAMS["tensor_parallel_size"])


def gpu_executor_config() -> dict:
    """A KubernetesExecutor ``pod_override`` with ``GPUS`` GPUs (``{}`` without the kubernetes
    client, e.g. on a CeleryExecutor deployment, where ``queue="gpu"`` does the routing)."""
    try:
        from kubernetes.client import models as k8s
    except ImportError:
        return {}
    gpu = {"nvidia.com/gpu": str(GPUS)}
    return {
        "pod_override": k8s.V1Pod(
            spec=k8s.V1PodSpec(
                containers=[
                    k8s.V1Container(
                        name="base",
                        resources=k8s.V1ResourceRequirements(requests=gpu, limits=gpu),
                    )
                ],
                tolerations=[
                    k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
                ],
            )
        )
    }


@dag(
    schedule="0 3 * * *",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["curator", "example", "gpu"],
    params={"working_dir": f"{ROOT}/runs", "output_root": f"{ROOT}/datasets"},
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "conn_id": "curator_default",
    },
    doc_md=__doc__,
)
def curator_vllm_gpu() -> None:
    cuisines = CuratorOperator(
        task_id="cuisines",
        llm=CuisineGenerator("gpt-4o-mini"),
        working_dir="{{ params.working_dir }}",
        output_uri="{{ params.output_root }}/vllm-cuisines/{{ run_date }}",
        run_key="{{ run_date }}",
    )
    recipe_llm = RECIPE_LLM
    recipe_kwargs = {"model_name": MODEL, "backend": "vllm", "backend_params": VLLM_PARAMS}
    prepare = CuratorPrepareOperator(
        task_id="prepare_recipes",
        llm=recipe_llm,
        llm_kwargs=recipe_kwargs,
        dataset=cuisines.output["output_uri"],
        working_dir="{{ params.working_dir }}",
        run_key="{{ run_date }}",
    )
    generate = CuratorVLLMOperator.partial(
        task_id="generate",
        run=prepare.output["run"],
        python=VLLM_PYTHON,
        env=VLLM_ENV,
        pool_slots=GPUS,
        executor_config=gpu_executor_config(),
        execution_timeout=timedelta(hours=6),
    ).expand(shard=prepare.output)
    publish = CuratorFinalizeOperator(
        task_id="publish_recipes",
        run=prepare.output["run"],
        llm=recipe_llm,
        llm_kwargs=recipe_kwargs,
        output_uri="{{ params.output_root }}/vllm-recipes/{{ run_date }}",
    )
    generate >> publish


vllm_gpu = curator_vllm_gpu()
