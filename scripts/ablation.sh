#!/usr/bin/env bash
# One row of docs/results.md "What makes the student better": the teacher plays 40 training episodes x 40 turns
# on easy -> filter_traces -> sft_kickoff (local/tiny-qwen3, batch 8, LR multiplier 2) -> eval against
# builtin:random on the 20 held-out seeds 100000-100019, 30 turns, T=0.7. Each stage is the real module.
#   bash scripts/ablation.sh DIR     with any of these to vary the row (defaults = row 5):
#   CRAFTER_TOOL_MODE=text|tools  FILTER_REASONING=subgoal|keep|drop  SFT_N_EPOCHS=1  SERVE_TINY_SIZE=small
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORK=${1:?usage: bash scripts/ablation.sh DIR}
mkdir -p "$WORK"
DB="sqlite:///$WORK/traces.db"
export CRAFTER_DIFFICULTY=easy CRAFTER_PROMPT=compact CRAFTER_HISTORY=0 CRAFTER_MAX_TOKENS=128 \
  CRAFTER_TOOL_MODE=${CRAFTER_TOOL_MODE:-text} FILTER_REASONING=${FILTER_REASONING:-subgoal} CRAFTER_DB_URL=$DB

PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SERVE_PORT=$PORT SERVE_DATA_DIR="$WORK/serve_data" $PY -m synth_qwen.serve > "$WORK/serve.log" 2>&1 &
SERVE_PID=$!
trap 'kill $SERVE_PID 2>/dev/null || true; wait $SERVE_PID 2>/dev/null || true' EXIT
until $PY -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/v1/health', timeout=2)" 2>/dev/null; do
  sleep 0.5
done

CRAFTER_MODEL=builtin:expert CRAFTER_EPISODES=40 CRAFTER_MAX_STEPS=40 CRAFTER_RUN_ID=ablation-teacher \
  $PY -m synth_qwen.run_crafter
OUTPUT_JSONL="$WORK/sft.jsonl" MODELS=builtin:expert $PY -m synth_qwen.filter_traces
LEARNING_V2_BASE_URL=http://127.0.0.1:$PORT/api SYNTH_API_KEY=sk-local QWEN_BASE_MODEL=local/tiny-qwen3 \
  QWEN_TRAINING_JSONL="$WORK/sft.jsonl" SFT_N_EPOCHS=${SFT_N_EPOCHS:-1} SFT_BATCH_SIZE=8 \
  SFT_LEARNING_RATE_MULTIPLIER=2 SFT_POLL_INTERVAL_S=5 $PY -m synth_qwen.sft_kickoff
FT_MODEL=$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))['fine_tuned_model'])" "$WORK/sft.sft_state.json")
OPENAI_BASE_URL=http://127.0.0.1:$PORT/v1 EVAL_MODELS="builtin:random $FT_MODEL" EVAL_EPISODES=20 \
  CRAFTER_MAX_STEPS=30 CRAFTER_CONCURRENCY=20 CRAFTER_TEMPERATURE=0.7 EVAL_RUN_ID=ablation-eval \
  EVAL_REPORT_DIR="$WORK/report" EVAL_REPLAYS=false $PY -m synth_qwen.eval
