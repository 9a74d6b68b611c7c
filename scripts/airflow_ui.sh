#!/usr/bin/env bash
# `make airflow-ui`: a local Airflow (API server + UI, scheduler, DAG processor, triggerer, log
# servers), a simulator and a curator_default connection to it, every one on 127.0.0.1 only.
# Ports from AIRFLOW_UI_PORT, CURATOR_SIM_PORT, AIRFLOW_WORKER_LOG_PORT,
# AIRFLOW_TRIGGER_LOG_PORT (unset: free ones); Airflow's home AIRFLOW_UI_HOME (./.airflow).
# Ctrl-C or SIGTERM stops every component's whole process group: see scripts/airflow_ui.py.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec "$REPO_ROOT/.venv/bin/python" "$REPO_ROOT/scripts/airflow_ui.py" "$@"
