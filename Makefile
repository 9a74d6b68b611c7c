# Every target bootstraps its own environment: uv (installed with pip if missing), then .venv
# synced from uv.lock with every extra but vllm (the newest Airflow, and the newest Prefect that
# can share its environment). The vLLM tests get their own pip venv, and each end of a declared
# version range its own venv from committed pins (scripts/envs/NAME.txt, scripts/setup_env.sh).
SHELL := /bin/bash
PYTHON ?= python3
# uv on PATH, else the one `make uv` installs with pip (run as a module: no PATH assumptions).
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
EXTRAS := --extra litellm --extra airflow --extra prefect --extra s3 --extra gcs --extra dev --extra docs
VENV_PY := .venv/bin/python
VLLM_PY := .venv-vllm/bin/python
# The version-range environments: .venv-NAME from scripts/envs/NAME.txt (one integration each).
RANGE_ENVS := airflow-oldest prefect-oldest prefect-newest
# The engine's quick smoke, run in every range environment beside the integration's own tests.
SMOKE := tests/test_steps.py tests/test_llm_online.py
PYTEST := -m pytest -q -p no:cacheprovider
# The suites wait on servers, simulators and subprocesses far more than they compute: pytest-xdist
# workers overlap those waits (each file stays on one worker, so its module fixtures start once).
PARALLEL := --dist loadfile -n

.PHONY: uv venv test test-fast test-vllm test-ranges demo prefect-ui lint bench bench-prefect bench-vllm vllm-venv range-envs pin-envs

uv:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet uv || $(PYTHON) -m pip install --user --quiet uv

venv: uv
	@$(UV) sync --frozen $(EXTRAS) --compile-bytecode --quiet

vllm-venv:
	@bash scripts/setup_vllm_venv.sh

range-envs: uv
	@for env in $(RANGE_ENVS); do bash scripts/setup_env.sh $$env || exit 1; done

# Recompile scripts/envs/*.txt after editing a .in (or pyproject.toml's dependencies).
pin-envs: uv
	@bash scripts/pin_env.sh

# The Prefect suite runs at both ends of its range (test-ranges), not again at the dev
# environment's Prefect in between (make test-fast runs it there): CI's 25 minutes.
test: venv vllm-venv range-envs
	.venv/bin/lint-imports --no-cache
	$(VENV_PY) $(PYTEST) $(PARALLEL) 4 tests --ignore=tests/vllm --ignore=tests/prefect_tasks
	$(VLLM_PY) $(PYTEST) tests/vllm
	@$(MAKE) --no-print-directory test-ranges

# Each integration at the other ends of its range, without the other orchestrator: the oldest
# Airflow (the newest runs in .venv, in make test), the oldest and the newest Prefect. The three
# suites run at once (the Prefect ones mostly wait on their servers and simulators: two cores
# hold all three; xdist workers on top of them overload two cores), each one's output printed
# together when it ends (-O).
test-ranges: range-envs
	@$(MAKE) --no-print-directory -j3 -O $(addprefix test-range-,$(RANGE_ENVS))

test-range-airflow-%:
	.venv-airflow-$*/bin/python $(PYTEST) tests/airflow_provider $(SMOKE)

test-range-prefect-%:
	.venv-prefect-$*/bin/python $(PYTEST) tests/prefect_tasks $(SMOKE)

test-fast: venv
	.venv/bin/lint-imports --no-cache
	$(VENV_PY) $(PYTEST) $(PARALLEL) 4 tests --ignore=tests/vllm

# The real vLLM engine on CPU (tests/vllm: generator, offline LLM, OpenAI-compatible server).
test-vllm: vllm-venv
	$(VLLM_PY) -m pytest -q -p no:cacheprovider tests/vllm

# The nightly build as a Prefect flow on Prefect's temporary local server and the embedded
# simulator (no API key, no network); ARGS="--model gpt-4o-mini" with OPENAI_API_KEY set.
demo: venv
	$(VENV_PY) -m dags_examples.demo $(ARGS)

# A local Prefect server + UI (http://127.0.0.1:4200), the simulator, the nightly flow served
# (runs and datasets under ./curator-output/prefect-ui/); Ctrl-C or SIGTERM stops all of it.
prefect-ui: venv
	exec $(VENV_PY) -m dags_examples.prefect_ui $(ARGS)

lint: venv
	$(VENV_PY) -m ruff check .
	$(VENV_PY) -m ruff format --check .
	.venv/bin/lint-imports --no-cache

bench: venv
	$(VENV_PY) benchmarks/online_throughput.py
	$(VENV_PY) benchmarks/rate_limit.py
	$(VENV_PY) benchmarks/cache_hit.py
	$(VENV_PY) benchmarks/batch_pipeline.py
	$(VENV_PY) benchmarks/prepare_rows.py
	$(VENV_PY) benchmarks/read_parquet_input.py
	$(VENV_PY) benchmarks/vs_bare_client.py
	$(VENV_PY) benchmarks/publish_parquet.py
	$(VENV_PY) benchmarks/llm_construction.py

# Prefect's added wall time and the flow process's peak memory (20,000 requests, 4 shards).
bench-prefect: venv
	$(VENV_PY) benchmarks/prefect_overhead.py $(ARGS)

bench-vllm: vllm-venv
	$(VLLM_PY) benchmarks/vllm_offline.py $(ARGS)

.PHONY: demo-airflow airflow-ui bench-airflow

# The nightly online DAG through Airflow's dag.test() in a temporary AIRFLOW_HOME (SQLite),
# against the embedded simulator; prints where the dataset landed.
demo-airflow: venv
	$(VENV_PY) -m dags_examples.airflow_demo $(ARGS)

# A local Airflow in .airflow/ (SQLite; API server + UI, scheduler, DAG processor, triggerer,
# log servers) with the example DAGs, the provider and a curator_default connection to a
# simulator, all on 127.0.0.1 only: http://127.0.0.1:8080 (or the free port it prints), user
# admin, the password it prints. Ports: AIRFLOW_UI_PORT=, CURATOR_SIM_PORT=,
# AIRFLOW_WORKER_LOG_PORT=, AIRFLOW_TRIGGER_LOG_PORT= (unset: free ones).
airflow-ui: venv
	bash scripts/airflow_ui.sh

# Airflow's added wall time for the nightly online DAG, and DAG-file parse times.
bench-airflow: venv
	$(VENV_PY) benchmarks/airflow_overhead.py $(ARGS)
	$(VENV_PY) benchmarks/airflow_parse_time.py

.PHONY: docs docs-build

# The documentation site (mkdocs.yml, docs/): served on 127.0.0.1 only, rebuilt on every change.
# NO_MKDOCS_2_WARNING: Material's console banner about MkDocs 2.0, not a build warning.
DOCS_PORT ?= 8000
docs: venv
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

# Strict: a broken link, anchor or API reference entry fails the build (make test runs it as
# tests/docs/test_site_build.py).
docs-build: venv
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir site
