#!/usr/bin/env bash
# The main job (grows into the full offline loop): random play on each preset + world statistics.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY -m synth_qwen.crafter_env --episodes 3
$PY -m synth_qwen.crafter_env --stats --worlds 20
