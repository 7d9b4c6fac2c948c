"""The main job, reduced: scripts/quickstart.sh end to end (serve, teacher, filter, fine-tune, eval)."""
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_quickstart_smoke_produces_every_artifact(tmp_path):
    work = tmp_path / "qs"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CRAFTER_", "OPENAI_", "SYNTH_", "LEARNING_", "EVAL_", "SFT_", "QWEN_", "SERVE_"))}
    env.update(QUICKSTART_SMOKE="1", QUICKSTART_DIR=str(work), PY=sys.executable, SERVE_TINY_SIZE="micro")
    done = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=880)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    # 1. traces: the teacher's sessions, then every evaluated model's
    db = sqlite3.connect(work / "traces.db")
    teacher = db.execute("SELECT COUNT(*) FROM session_traces WHERE run_id='quickstart-teacher' "
                         "AND status != 'incomplete'").fetchone()[0]
    assert teacher == 6
    evaluated = dict(db.execute("SELECT model, COUNT(*) FROM session_traces WHERE purpose='eval' GROUP BY model"))
    # 2. SFT data: one line per valid teacher turn
    lines = (work / "crafter_sft.jsonl").read_text().splitlines()
    assert len(lines) >= 10 and all(json.loads(line)["messages"][-1]["tool_calls"] for line in lines)
    # 3. the fine-tuned model
    state = json.loads((work / "crafter_sft.sft_state.json").read_text())
    assert state["status"] == "succeeded" and state["fine_tuned_model"].startswith("ft:local/tiny-qwen3:")
    assert f"fine-tuned model: {state['fine_tuned_model']}" in output
    assert set(evaluated) == {"local/tiny-qwen3", state["fine_tuned_model"], "builtin:random", "builtin:expert"}
    assert set(evaluated.values()) == {4}
    # 4. the report
    report = json.loads((work / "report" / "report.json").read_text())
    first = report["comparisons"][0]  # the fine-tuned model, compared with its base on paired seeds
    assert (first["baseline"], first["model"]) == ("local/tiny-qwen3", state["fine_tuned_model"])
    assert first["paired_seeds"] == 4
    assert (work / "report" / "report.md").exists() and (work / "report" / "achievements.png").exists()
    assert len(list((work / "report" / "replays").glob("*.gif"))) >= 2
    assert "quickstart finished in" in output and "paired seeds" in output
