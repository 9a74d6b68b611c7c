#!/usr/bin/env bash
# `make airflow-ui`: a local Airflow (`airflow standalone`: API server + UI, scheduler,
# triggerer, DAG processor) in ./.airflow with SQLite, the example DAGs, this provider, and a
# `curator_default` connection to a simulator running next to it. Log in at
# http://localhost:${AIRFLOW_UI_PORT:-8080} as admin / admin. Ctrl-C stops everything (the whole
# process group of airflow standalone, and the simulator).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BIN="$REPO_ROOT/.venv/bin"
export PATH="$VENV_BIN:$PATH"  # airflow standalone starts its components as `airflow ...`
SIM_PORT="${CURATOR_SIM_PORT:-8765}"
UI_PORT="${AIRFLOW_UI_PORT:-8080}"

export AIRFLOW_HOME="$REPO_ROOT/.airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO_ROOT/dags_examples"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__CORE__TEST_CONNECTION=Enabled
export AIRFLOW__API__PORT="$UI_PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://localhost:$UI_PORT/execution/"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin"
export AIRFLOW__OPENLINEAGE__DISABLED=True
export CURATOR_EXAMPLES_ROOT="$AIRFLOW_HOME/data"
mkdir -p "$AIRFLOW_HOME" "$CURATOR_EXAMPLES_ROOT"
# a fixed local password (this Airflow listens on localhost only)
PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
[ -f "$PASSWORDS" ] || echo '{"admin": "admin"}' > "$PASSWORDS"

SIM_PID=""
AIRFLOW_PID=""
stop() {
  trap - INT TERM EXIT
  echo "[airflow-ui] stopping"
  # airflow standalone runs in its own process group: stop all of it
  [ -n "$AIRFLOW_PID" ] && kill -TERM -- "-$AIRFLOW_PID" 2>/dev/null || true
  [ -n "$SIM_PID" ] && kill -TERM "$SIM_PID" 2>/dev/null || true
  for _ in $(seq 1 40); do
    kill -0 -- "-$AIRFLOW_PID" 2>/dev/null || break
    sleep 0.5
  done
  [ -n "$AIRFLOW_PID" ] && kill -KILL -- "-$AIRFLOW_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

echo "[airflow-ui] simulator on http://127.0.0.1:$SIM_PORT/v1"
"$VENV_BIN/curator-flows" simulator --port "$SIM_PORT" --latency 0.05 --rpm 6000 \
  --batch-timings validating=2,in_progress=20,finalizing=2 &
SIM_PID=$!

"$VENV_BIN/airflow" db migrate >/dev/null
"$VENV_BIN/airflow" connections delete curator_default >/dev/null 2>&1 || true
"$VENV_BIN/airflow" connections add curator_default --conn-type curator \
  --conn-host "http://127.0.0.1:$SIM_PORT/v1" --conn-password simulator \
  --conn-extra '{"provider": "openai"}' >/dev/null
"$VENV_BIN/airflow" pools set gpu 1 "GPU slots (CuratorVLLMOperator's default pool)" >/dev/null

echo "[airflow-ui] Airflow UI on http://localhost:$UI_PORT (user admin, password admin); Ctrl-C stops"
setsid "$VENV_BIN/airflow" standalone &
AIRFLOW_PID=$!
wait "$AIRFLOW_PID"
