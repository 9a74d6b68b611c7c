#!/usr/bin/env bash
# Compile the pins of one version-range environment: scripts/envs/NAME.in -> NAME.txt.
#
#   scripts/pin_env.sh prefect-oldest      # one environment
#   scripts/pin_env.sh                     # every scripts/envs/*.in
#
# NAME.in names the integration's version (e.g. `prefect==3.4.9`) and, in comment lines:
#   # extras: prefect dev            the project's extras installed beside it
#   # exclude-newer: 2025-07-18      resolve as of that day (the release day of an oldest
#                                    version: what a team that installed it then runs; newer
#                                    fastapi/pydantic releases break old orchestrator servers)
# The project's dependencies come from pyproject.toml; the dev environment's own settings
# ([tool.uv] constraint-dependencies, which hold uv.lock at the newest Airflow) are ignored
# (--no-config), as they are for every user. Commit the .txt: CI installs exactly that.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
if command -v uv >/dev/null 2>&1; then UV=(uv); else UV=(python3 -m uv); fi

pin() {
  local name="$1" in="scripts/envs/$1.in" extras=() options=()
  [ -f "$in" ] || { echo "[pin_env] error: no $in" >&2; exit 1; }
  local extra
  for extra in $(sed -n 's/^# extras: *//p' "$in"); do extras+=(--extra "$extra"); done
  local day
  day="$(sed -n 's/^# exclude-newer: *//p' "$in")"
  if [ -n "$day" ]; then options+=(--exclude-newer "${day}T00:00:00Z"); fi
  echo "[pin_env] $in -> scripts/envs/$name.txt"
  "${UV[@]}" pip compile --quiet --no-config --universal --python-version 3.11 \
    --custom-compile-command "scripts/pin_env.sh $name" \
    pyproject.toml "$in" "${extras[@]}" "${options[@]}" -o "scripts/envs/$name.txt"
}

if [ $# -eq 0 ]; then
  for in in scripts/envs/*.in; do pin "$(basename "$in" .in)"; done
else
  for name in "$@"; do pin "$name"; done
fi
