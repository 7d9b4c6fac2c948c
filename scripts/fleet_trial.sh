#!/usr/bin/env bash
# A fleet trial: PROCESSES run_crafter processes (builtin:random) on one run id and one trace DB, then a
# check that every seed was finished exactly once and no process printed a traceback.
#   bash scripts/fleet_trial.sh postgresql://user:pass@host:5432/db [PROCESSES=3] [EPISODES=48]
#   bash scripts/fleet_trial.sh sqlite:///tmp/fleet.db 3 48
set -euo pipefail
cd "$(dirname "$0")/.."
db_url=${1:?usage: fleet_trial.sh DB_URL [PROCESSES] [EPISODES]}
processes=${2:-3}
episodes=${3:-48}
python=${PYTHON:-.venv/bin/python}
run_id="fleet-trial-$(date +%Y%m%d-%H%M%S)-$RANDOM"
logs=$(mktemp -d)
for i in $(seq 1 "$processes"); do
  CRAFTER_DB_URL=$db_url CRAFTER_RUN_ID=$run_id CRAFTER_SEED=1 CRAFTER_EPISODES=$episodes CRAFTER_MAX_STEPS=40 \
    CRAFTER_MODEL=builtin:random "$python" -m synth_qwen.run_crafter >"$logs/out$i" 2>"$logs/err$i" &
done
failed=0
for job in $(jobs -p); do wait "$job" || failed=$((failed + 1)); done
tracebacks=$(cat "$logs"/err* | grep -c Traceback || true)
if [ "$failed" -gt 0 ]; then
  echo "$failed of $processes processes failed; their last lines:"; tail -qn 1 "$logs"/err*; exit 1
fi
"$python" - "$db_url" "$run_id" "$episodes" "$processes" "$failed" "$tracebacks" <<'PY'
import sys
from synth_qwen import tracing
from synth_qwen.settings import redact
db_url, run_id, episodes, processes, failed, tracebacks = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
engine = tracing.open_db(db_url, create=False)
seeds = [s.seed for s in tracing.sessions(engine, tracing.session_traces.c.run_id == run_id) if s.finished]
lost = sorted(set(range(1, episodes + 1)) - set(seeds))
print(f"{redact(db_url)}: {processes} processes, run {run_id}: {episodes} seeds wanted, {len(set(seeds))} finished, "
      f"{len(seeds) - len(set(seeds))} twice, {len(lost)} lost, {failed} processes failed, {tracebacks} tracebacks")
sys.exit(0 if not lost and len(seeds) == len(set(seeds)) and not failed and not tracebacks else 1)
PY
