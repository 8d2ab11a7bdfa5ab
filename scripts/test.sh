#!/usr/bin/env bash
# Set up (idempotent, including Chromium) and run the tests in two environments:
#   1. .venv-newest (the newest transformers, requirements-newest.txt, no kvpress): the engine tests, NEWEST_TESTS;
#   2. .venv (transformers 5.2.0, kvpress 0.5.5, the app and the browser): the whole suite, last, so the closing
#      lines are its pytest summary, followed by one line per environment. The exit status is non-zero when
#      either run fails.
# Arguments go to pytest. With arguments only the main run happens (a targeted run), unless KVCRUSH_TEST_NEWEST=1,
# which runs the same arguments in both environments; KVCRUSH_TEST_NEWEST=0 skips the second environment.
set -euo pipefail
cd "$(dirname "$0")/.."

# The library tests that need neither kvpress (its tests skip, saying why, where it is missing), nor streamlit, nor
# the browser: the engine, every policy, model families and loading, the tokenizer round-trip, explanations, and the
# benchmark's tests that do not import kvpress. tests/test_package.py builds and serves the explorer: main run only.
NEWEST_TESTS=()
for file in tests/test_*.py; do
  [ "$file" = tests/test_package.py ] || NEWEST_TESTS+=("$file")
done
NEWEST_TESTS+=(
  tests/models
  tests/policies
  tests/explain
  tests/integrations
  tests/robustness/test_bad_input.py
  tests/robustness/test_concurrency.py
  tests/robustness/test_limits.py
  tests/robustness/test_selection_properties.py
  tests/benchmarks/test_env.py
  tests/benchmarks/test_gpu_measure.py
  tests/benchmarks/test_overhead_cli.py
  tests/benchmarks/test_quantized.py
  tests/benchmarks/test_stats.py
  tests/benchmarks/test_tasks.py
)

newest="${KVCRUSH_TEST_NEWEST:-auto}"
if [ "$newest" = auto ]; then
  newest=$([ "$#" -eq 0 ] && echo 1 || echo 0)
fi

if [ "$newest" = 1 ]; then
  bash scripts/setup.sh --browser --newest
else
  bash scripts/setup.sh --browser
fi

LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT
summary() {  # the last line pytest printed (its summary), from a log
  grep -v '^\s*$' "$1" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//'
}

newest_status=0
if [ "$newest" = 1 ]; then
  if [ "$#" -eq 0 ]; then newest_args=("${NEWEST_TESTS[@]}"); else newest_args=("$@"); fi
  version=$(.venv-newest/bin/python -c "import transformers; print(transformers.__version__)")
  newest_label=$([ "$#" -eq 0 ] && echo "engine tests" || echo "$*")
  echo "==> [1/2] $newest_label on transformers $version (.venv-newest, without kvpress)"
  set +e
  .venv-newest/bin/python -m pytest -q "${newest_args[@]}" 2>&1 | tee "$LOGS/newest.log"
  newest_status=${PIPESTATUS[0]}
  set -e
fi
main_version=$(.venv/bin/python -c "import transformers; print(transformers.__version__)")
main_label=$([ "$#" -eq 0 ] && echo "whole suite" || echo "$*")
if [ "$newest" = 1 ]; then echo "==> [2/2] $main_label on transformers $main_version with kvpress (.venv)"; fi

# The main environment has kvpress: its parity tests must run, not skip (tests/conftest.py: kvpress_or_skip).
set +e
KVCRUSH_REQUIRE_KVPRESS=1 .venv/bin/python -m pytest -q "$@" 2>&1 | tee "$LOGS/main.log"
main_status=${PIPESTATUS[0]}
set -e

if [ "$newest" = 1 ]; then
  ok() { [ "$1" -eq 0 ] && echo "ok" || echo "FAILED (exit $1)"; }
  echo "==> transformers $version (.venv-newest, $newest_label): $(summary "$LOGS/newest.log") -- $(ok "$newest_status")"
  echo "==> transformers $main_version (.venv, $main_label): $(summary "$LOGS/main.log") -- $(ok "$main_status")"
fi
[ "$newest_status" -eq 0 ] && [ "$main_status" -eq 0 ]
