#!/usr/bin/env bash
# Create (or refresh) the venv of one version-range environment from its committed pins.
#
#   scripts/setup_env.sh airflow-oldest       # -> <repo>/.venv-airflow-oldest
#
# Each environment tests one integration at one end of its declared range, without the other
# orchestrator (users install one or the other): scripts/envs/NAME.txt holds every package
# pinned (compiled from scripts/envs/NAME.in by scripts/pin_env.sh), installed exactly with
# `uv pip sync`, then the project itself editable without its dependencies (its entry points,
# the Airflow provider's included). Idempotent: a stamp file records the pins, pyproject.toml
# and this script; when it matches, the script is a fast no-op.
set -euo pipefail

NAME="${1:?usage: scripts/setup_env.sh NAME (a file scripts/envs/NAME.txt)}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PINS="$REPO_ROOT/scripts/envs/$NAME.txt"
VENV="$REPO_ROOT/.venv-$NAME"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.curator-flows-setup.stamp"

log() { echo "[setup_env $NAME] $*"; }

[ -f "$PINS" ] || { echo "[setup_env] error: no pins $PINS" >&2; exit 1; }

# uv on PATH, else the one `make uv` installs with pip. Every uv call names the venv's python
# (--python): `python -m uv pip` would otherwise install into the python that runs uv.
if command -v uv >/dev/null 2>&1; then UV=(uv); else UV=(python3 -m uv); fi

digest() { if command -v sha256sum >/dev/null 2>&1; then sha256sum "$@"; else cksum "$@"; fi; }
WANT="$(digest "$PINS" "$REPO_ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | cut -d' ' -f1)"

venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; sys.exit(0)' >/dev/null 2>&1
}

if venv_ok && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" == "$WANT" ]; then
  log "up to date: $VENV"
  exit 0
fi

if ! venv_ok; then
  log "creating $VENV with $PYTHON"
  rm -rf "$VENV"
  "${UV[@]}" venv --no-config --quiet --python "$PYTHON" "$VENV"
fi
rm -f "$STAMP"

log "installing the pins of $(basename "$PINS")"
"${UV[@]}" pip sync --no-config --quiet --python "$VENV/bin/python" "$PINS"
log "installing the project (editable, no dependencies: the pins hold them)"
"${UV[@]}" pip install --no-config --quiet --python "$VENV/bin/python" --no-deps -e "$REPO_ROOT"
if ! "${UV[@]}" pip check --no-config --quiet --python "$VENV/bin/python"; then
  echo "[setup_env $NAME] error: the pins miss a dependency of pyproject.toml:" \
    "recompile them (make pin-envs, or scripts/pin_env.sh $NAME) and commit the .txt" >&2
  exit 1
fi

printf '%s\n' "$WANT" >"$STAMP"
log "done: $VENV"
