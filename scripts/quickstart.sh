#!/usr/bin/env bash
# The main job: the whole rejection-sampling fine-tuning loop, offline, on this machine.
# A thin script: every step is the real module, called with env vars exactly as in the README's
# step-by-step section. A second run reuses what exists (traces, the finished job, eval episodes).
#   QUICKSTART_SMOKE=1   a reduced run (CI)       QUICKSTART_DIR=path   where everything goes
#   ROUNDS=1             stop after round 0 (teacher data only); the default 2 adds a DAgger round:
#                        the student plays, the teacher relabels its turns, round 1 trains on both
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if [ "${QUICKSTART_SMOKE:-0}" = 1 ]; then  # tiny sizes, and a DAgger round so that every stage runs
  TEACHER_EPISODES=6  STUDENT_EPISODES=3  TURNS=8  EVAL_EPISODES=4  EPOCHS=1 ROUNDS=${ROUNDS:-2}
  WORK=${QUICKSTART_DIR:-runs/quickstart-smoke}
else
  TEACHER_EPISODES=40 STUDENT_EPISODES=20 TURNS=30 EVAL_EPISODES=50 EPOCHS=3 ROUNDS=${ROUNDS:-2}
  WORK=${QUICKSTART_DIR:-runs/quickstart}
fi
mkdir -p "$WORK"
DB="sqlite:///$WORK/traces.db"
# The tiny model's prompt shape, shared by every rollout, its training data and the evaluation (train
# context = inference context): a one-line system prompt, no history, text replies ("collect wood\n
# Actions: move_left, do": no tools block, half the tokens of a tool call prompt), the teacher's
# reasoning cut to its subgoal, and each turn where the teacher takes an achievement the observation lists
# as ready written 6 times (docs/results.md "What makes the student better" measures each choice).
export CRAFTER_DIFFICULTY=easy CRAFTER_PROMPT=compact CRAFTER_HISTORY=0 CRAFTER_MAX_TOKENS=64 \
  CRAFTER_TOOL_MODE=text FILTER_REASONING=subgoal FILTER_READY_REPEATS=6

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

stage "1. rounds: the teacher plays -> SFT data -> fine-tune -> eval on held-out seeds (-> DAgger rounds)"
OPENAI_BASE_URL=http://127.0.0.1:$PORT/v1 LEARNING_V2_BASE_URL=http://127.0.0.1:$PORT/api SYNTH_API_KEY=sk-local \
  QWEN_BASE_MODEL=local/tiny-qwen3 ROUNDS=$ROUNDS ROUNDS_DIR="$WORK" ROUNDS_RUN_PREFIX=quickstart \
  ROUNDS_TEACHER_EPISODES=$TEACHER_EPISODES ROUNDS_STUDENT_EPISODES=$STUDENT_EPISODES CRAFTER_MAX_STEPS=$TURNS \
  CRAFTER_CONCURRENCY=20 EVAL_EPISODES=$EVAL_EPISODES CRAFTER_DB_URL=$DB \
  SFT_N_EPOCHS=$EPOCHS SFT_BATCH_SIZE=8 SFT_LEARNING_RATE_MULTIPLIER=2 SFT_SEED=0 SFT_POLL_INTERVAL_S=2 \
  $PY -m synth_qwen.rounds

stage done
printf '\n== quickstart finished in %ss ==%b\n' $((SECONDS - START)) "$TIMES"
echo "round table: $WORK/rounds.md   chart: $WORK/rounds.png   per-round reports: $WORK/eval/"
echo "browse every episode turn by turn, with its frames: CRAFTER_DB_URL=$DB $PY -m synth_qwen.view   then open http://127.0.0.1:8100/"
