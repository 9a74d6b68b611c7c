"""The nightly dataset build as a Prefect flow: Curator's cuisines example, then a recipe per
cuisine (the generators of :mod:`dags_examples.generators`), the recipes run reading the
cuisines run's published output URI. The scheduled date is the run key: a re-run the same
night resumes, the next night generates afresh.

    python -m dags_examples.prefect_nightly run [--base-url URL] [--model M]   # once, now
    python -m dags_examples.prefect_nightly serve [--base-url URL]             # nightly cron
    python -m dags_examples.prefect_nightly deploy --work-pool gpu-pool        # GPU work pool

``make demo`` runs it on Prefect's temporary local server against the embedded simulator;
``make prefect-ui`` serves it on a local Prefect server against a running simulator.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from prefect import flow

from dags_examples.generators import CuisineGenerator, RecipeGenerator
from prefect_tasks import curate, curate_offline, curate_offline_shard

NIGHTLY_CRON = "0 2 * * *"
DEFAULT_ROOT = os.path.abspath("curator-output")


def _scheduled_date() -> str:
    from prefect.runtime import flow_run

    return flow_run.scheduled_start_time.strftime("%Y-%m-%d")


def _night_name() -> str:
    """The flow run's name: ``nightly-<run key>`` (its subflows are named after their
    datasets: ``nightly-cuisines-<run key>``, ``nightly-recipes-<run key>``)."""
    from prefect.runtime import flow_run

    return f"nightly-{flow_run.parameters.get('run_date') or _scheduled_date()}"


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    stats = summary["statistics"]
    return {
        "rows": summary["rows"],
        "failed": summary["failed"],
        "cost": stats["cost_info"]["total_cost"],
        "input_tokens": stats["token_usage"]["input"],
        "output_tokens": stats["token_usage"]["output"],
        "time": stats["performance_stats"]["total_time"],
        "output_uri": summary["output_uri"],
        "asset_uri": summary["asset_uri"],
        "run_uri": summary["run_uri"],
    }


@flow(
    name="nightly-recipes",
    flow_run_name=_night_name,
    result_serializer="json",
    persist_result=True,
)
def nightly_recipes(
    run_date: str | None = None,
    model: str = "gpt-4o-mini",
    working_dir: str = f"{DEFAULT_ROOT}/runs",
    output_root: str = f"{DEFAULT_ROOT}/datasets",
    credentials: str | None = None,
    base_url: str | None = None,
) -> dict[str, Any]:
    """Cuisines, then one recipe per cuisine; each dataset published as Parquet in the night's
    Hive partition ``<output_root>/<name>/date=<date>/`` (every night one table).
    ``credentials``: a saved ``CuratorCredentials`` block's name (else ``OPENAI_API_KEY``);
    ``base_url``: an OpenAI-compatible endpoint (the simulator)."""
    run_key = run_date or _scheduled_date()
    backend_params = {"base_url": base_url} if base_url else {}
    cuisines = curate(
        CuisineGenerator(model, backend_params=backend_params),
        working_dir=working_dir,
        output_uri=f"{output_root}/cuisines",
        partition={"date": run_key},
        run_key=run_key,
        credentials=credentials,
        artifact_key="nightly-cuisines",
    )
    recipes = curate(
        RecipeGenerator(model, backend_params=backend_params),
        cuisines["output_uri"],  # the published cuisines are the recipes' input
        working_dir=working_dir,
        output_uri=f"{output_root}/recipes",
        partition={"date": run_key},
        run_key=run_key,
        credentials=credentials,
        artifact_key="nightly-recipes",
    )
    return {"run_key": run_key, "cuisines": _brief(cuisines), "recipes": _brief(recipes)}


def nightly_deployment(
    base_url: str | None = None,
    credentials: str | None = None,
    working_dir: str | None = None,
    output_root: str | None = None,
) -> Any:
    """The nightly build's deployment: every night at 02:00 (UTC), parameters for the
    endpoint and the credentials block (and, when given, where runs and datasets go)."""
    parameters: dict[str, Any] = {"base_url": base_url, "credentials": credentials}
    if working_dir:
        parameters["working_dir"] = working_dir
    if output_root:
        parameters["output_root"] = output_root
    return nightly_recipes.to_deployment(
        name="nightly", cron=NIGHTLY_CRON, parameters=parameters, tags=["curator-flows"]
    )


def serve(
    base_url: str | None = None,
    credentials: str | None = None,
    working_dir: str | None = None,
    output_root: str | None = None,
) -> None:
    """Serve the nightly build from this process (Ctrl-C stops it): a run every night at 02:00,
    or now from the UI's "Quick run". (``nightly_recipes.serve(name=..., cron=...)`` does the
    same for one flow.)"""
    from prefect import serve as serve_deployments

    serve_deployments(nightly_deployment(base_url, credentials, working_dir, output_root))


def deploy_gpu(
    work_pool: str = "gpu-pool",
    image: str = "registry.example.com/curator-vllm:cuda12",
    gpu_count: int = 1,
    build: bool = False,
) -> list[Any]:
    """Deploy the offline (vLLM) build onto a GPU work pool: the per-shard flow runs there with
    job variables asking for GPUs; the parent flow (any pool) fans the shards out to it.

    ``gpu_count`` is a variable your pool's base job template maps to ``nvidia.com/gpu`` (see
    ``dags_examples/vllm_gpu_notes.md``); the image holds ``curator-flows[vllm]``, this
    repository and the model weights (or a volume with them, ``HF_HOME``)."""
    job_variables = {
        "image": image,
        "env": {"HF_HOME": "/models/hf", "HF_HUB_OFFLINE": "1"},
        "gpu_count": gpu_count,
    }
    shard_id = curate_offline_shard.deploy(
        name="gpu",
        work_pool_name=work_pool,
        image=image,
        build=build,
        push=False,
        job_variables=job_variables,
        tags=["gpu", "vllm"],
    )
    parent_id = curate_offline.deploy(
        name="nightly-offline",
        work_pool_name=work_pool,
        image=image,
        build=build,
        push=False,
        job_variables={"image": image},  # the parent needs no GPU: it only waits
        cron=NIGHTLY_CRON,
        parameters={
            "llm": "dags_examples.generators:RecipeGenerator",
            "llm_kwargs": {"model_name": "meta-llama/Llama-3.1-8B-Instruct", "backend": "vllm"},
            "dataset": "s3://my-bucket/datasets/cuisines/{scheduled_date}",  # published output
            "working_dir": "s3://my-bucket/curator",
            "output_uri": "s3://my-bucket/datasets/recipes-vllm/{scheduled_date}",
            "run_key": "{scheduled_date}",  # each night a new run; a re-run resumes
            "shard_deployment": "curate-offline-shard/gpu",
            "credentials": "curator-prod",  # a saved CuratorCredentials block (storage keys)
        },
    )
    return [shard_id, parent_id]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "serve", "deploy"])
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. the simulator")
    parser.add_argument("--credentials", help="a saved CuratorCredentials block's name")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--work-pool", default="gpu-pool")
    parser.add_argument("--working-dir", help=f"where runs go (default {DEFAULT_ROOT}/runs)")
    parser.add_argument("--output-root", help=f"where datasets go ({DEFAULT_ROOT}/datasets)")
    args = parser.parse_args(argv)
    where = {k: v for k, v in (("working_dir", args.working_dir),
                               ("output_root", args.output_root)) if v}  # fmt: skip
    if args.command == "run":
        result = nightly_recipes(
            model=args.model, base_url=args.base_url, credentials=args.credentials, **where
        )
        print(result)
    elif args.command == "serve":
        serve(args.base_url, args.credentials, **where)
    else:
        print(deploy_gpu(args.work_pool))
    return 0


if __name__ == "__main__":
    sys.exit(main())
