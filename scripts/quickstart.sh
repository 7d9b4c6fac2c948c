#!/usr/bin/env bash
# The main job: the whole rejection-sampling fine-tuning loop, offline, on this machine.
# A thin script: every step is the real module, called with env vars exactly as in the README's
# step-by-step section. A second run reuses what exists (traces, the finished job, eval episodes).
#   QUICKSTART_SMOKE=1   a reduced run (CI)       QUICKSTART_DIR=path   where everything goes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if [ "${QUICKSTART_SMOKE:-0}" = 1 ]; then
  TEACHER_EPISODES=6  TEACHER_TURNS=20 EVAL_EPISODES=4  EVAL_TURNS=6  WORK=${QUICKSTART_DIR:-runs/quickstart-smoke}
else
  TEACHER_EPISODES=40 TEACHER_TURNS=40 EVAL_EPISODES=20 EVAL_TURNS=30 WORK=${QUICKSTART_DIR:-runs/quickstart}
fi
mkdir -p "$WORK"
DB="sqlite:///$WORK/traces.db"
JSONL="$WORK/crafter_sft.jsonl"
# The tiny model's prompt shape, shared by the teacher's traces and the evaluation (train context =
# inference context): a one-line system prompt, no history, short replies.
export CRAFTER_DIFFICULTY=easy CRAFTER_PROMPT=compact CRAFTER_HISTORY=0 CRAFTER_MAX_TOKENS=128

START=$SECONDS
STAGE_START=$SECONDS
TIMES=""
stage() {  # stage "name": print a header; record how long the previous stage took
  if [ -n "${STAGE_NAME:-}" ]; then TIMES="$TIMES\n  $(printf '%-34s %5ss' "$STAGE_NAME" $((SECONDS - STAGE_START)))"; fi
  STAGE_NAME=$1 STAGE_START=$SECONDS
  [ "$1" = done ] || printf '\n== %s ==\n' "$1"
}

stage "0. serve: the local learning service"
PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SERVE_PORT=$PORT SERVE_DATA_DIR="$WORK/serve_data" $PY -m synth_qwen.serve > "$WORK/serve.log" 2>&1 &
SERVE_PID=$!
trap 'kill $SERVE_PID 2>/dev/null || true; wait $SERVE_PID 2>/dev/null || true' EXIT
trap 'echo "interrupted"; exit 130' INT TERM
$PY - "$PORT" <<'EOF'
import sys, time, urllib.request
for _ in range(300):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/health", timeout=2)
        break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit("serve did not start; see its log")
EOF
head -n 2 "$WORK/serve.log"

stage "1. run_crafter: the teacher (builtin:expert) plays"
CRAFTER_MODEL=builtin:expert CRAFTER_EPISODES=$TEACHER_EPISODES CRAFTER_MAX_STEPS=$TEACHER_TURNS \
  CRAFTER_RUN_ID=quickstart-teacher CRAFTER_DB_URL=$DB $PY -m synth_qwen.run_crafter

stage "2. filter_traces: good episodes -> SFT JSONL"
CRAFTER_DB_URL=$DB OUTPUT_JSONL=$JSONL MIN_TOTAL_REWARD=1.0 MIN_ACHIEVEMENTS=0 MAX_COST=10.0 MAX_TOKENS=100000 \
  MODELS=builtin:expert $PY -m synth_qwen.filter_traces

stage "3. sft_kickoff: fine-tune local/tiny-qwen3"
LEARNING_V2_BASE_URL=http://127.0.0.1:$PORT/api SYNTH_API_KEY=sk-local QWEN_BASE_MODEL=local/tiny-qwen3 \
  QWEN_TRAINING_JSONL=$JSONL SFT_N_EPOCHS=1 SFT_BATCH_SIZE=8 SFT_LEARNING_RATE_MULTIPLIER=2 SFT_POLL_INTERVAL_S=2 \
  $PY -m synth_qwen.sft_kickoff
FT_MODEL=$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))['fine_tuned_model'])" "${JSONL%.jsonl}.sft_state.json")

stage "4. eval: base vs fine-tuned (+ random floor, expert ceiling) on held-out seeds"
OPENAI_BASE_URL=http://127.0.0.1:$PORT/v1 EVAL_MODELS="local/tiny-qwen3 $FT_MODEL builtin:random builtin:expert" \
  EVAL_EPISODES=$EVAL_EPISODES CRAFTER_MAX_STEPS=$EVAL_TURNS CRAFTER_CONCURRENCY=$EVAL_EPISODES \
  EVAL_RUN_ID="quickstart-eval-${FT_MODEL##*:}" EVAL_REPORT_DIR="$WORK/report" CRAFTER_DB_URL=$DB \
  $PY -m synth_qwen.eval

stage done
printf '\n== quickstart finished in %ss ==%b\n' $((SECONDS - START)) "$TIMES"
echo "report: $WORK/report/report.md   chart: $WORK/report/achievements.png"
ls "$WORK"/report/replays/*.gif 2>/dev/null | sed 's/^/replay: /' || true
