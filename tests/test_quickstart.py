"""The main job, reduced: scripts/quickstart.sh end to end — serve, then `rounds`: the teacher's
episodes → fine-tune → eval, the student plays → the teacher relabels → fine-tune → eval."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from synth_qwen import tracing
from synth_qwen.action_schema import parse_text_actions
from test_filter_traces import without_weights
from test_relabel import teacher_answers
from view_helpers import ViewServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    work = tmp_path_factory.mktemp("qs")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CRAFTER_", "OPENAI_", "SYNTH_", "LEARNING_", "EVAL_", "SFT_", "QWEN_", "SERVE_",
                                "ROUNDS", "FILTER_"))}
    env.update(QUICKSTART_SMOKE="1", QUICKSTART_DIR=str(work), PY=sys.executable, SERVE_TINY_SIZE="micro",
               ROUNDS_DATA="both")  # the smoke's DAgger round also keeps the student's own rewarded episodes
    done = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1100)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    engine = tracing.open_db(f"sqlite:///{work / 'traces.db'}", create=False)
    yield work, output, engine
    engine.dispose()


@pytest.mark.timeout(1200)
def test_quickstart_prints_the_round_table(quickstart):
    work, output, engine = quickstart
    result = json.loads((work / "rounds.json").read_text())
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(r["model"].startswith("ft:local/tiny-qwen3:r") for r in rounds)
    assert rounds[0]["model"] != rounds[1]["model"] and rounds[1]["examples"] > rounds[0]["examples"]  # aggregated
    assert set(rounds[0]["evals"]) == {"0.7"} and set(rounds[1]["evals"]) == {"0.7", "0"}  # both on the last round
    for evaluation in [e for r in rounds for e in r["evals"].values()]:
        low, high = evaluation["ci95"]
        assert low <= evaluation["progression"] <= high and "vs_random" in evaluation
    assert set(result["references"]) == {"builtin:random", "builtin:expert"}
    table = (work / "rounds.md").read_text()
    assert table.count("| 0 | `ft:") == 1 and table.count("| 1 | `ft:") == 1 and "References on the same seeds" in table
    assert "== rounds ==" in output and result["verdict"] in output and (work / "rounds.png").exists()
    assert "quickstart finished in" in output
    own = work / "round1-rejection.jsonl"  # ROUNDS_DATA=both: the student's own rewarded episodes, if any
    assert (own.exists() and all(json.loads(line)["metadata"]["model"] == rounds[0]["model"]
                                 and "relabelled_by" not in json.loads(line)["metadata"]
                                 for line in own.read_text().splitlines())) \
        or "this round learns from the relabelled turns only" in output
    # every stage's sessions: the teacher and the student on training seeds, every model on the eval seeds
    sessions = tracing.sessions(engine)
    plays = {s.run_id: s.model for s in sessions if s.purpose == "rollout"}
    assert plays == {"quickstart-r0-play": "builtin:expert", "quickstart-r1-play": rounds[0]["model"]}
    evaluated = {s.model for s in sessions if s.purpose == "eval"}
    assert evaluated == {"builtin:random", "builtin:expert", rounds[0]["model"], rounds[1]["model"]}


def test_no_eval_seed_is_in_any_training_example(quickstart):
    work, _, engine = quickstart
    eval_seeds = {s.seed for s in tracing.sessions(engine) if s.purpose == "eval"}
    trained = {json.loads(line)["metadata"]["seed"]
               for path in work.glob("round*-train.jsonl") for line in path.read_text().splitlines()}
    assert eval_seeds and trained and not eval_seeds & trained


def test_relabelled_examples_are_the_students_requests_with_the_teachers_replies(quickstart):
    """Round 1's data: the student's exact requests (as rebuilt from the DB, which the runner tests
    prove equal to what an endpoint receives), each answered by what the teacher does there."""
    work, _, engine = quickstart
    examples = [json.loads(line) for line in (work / "round1-relabel.jsonl").read_text().splitlines()]
    assert examples and all(e["metadata"]["relabelled_by"] == "builtin:expert" for e in examples)
    for session_id in {e["metadata"]["session_id"] for e in examples}:
        session, = tracing.sessions(engine, tracing.session_traces.c.session_id == session_id)
        requests = dict(tracing.rebuild_requests(engine, session_id))
        mine = {e["metadata"]["turn"]: e for e in examples if e["metadata"]["session_id"] == session_id}
        with engine.connect() as conn:
            answers = teacher_answers(session, tracing.session_steps(conn, session_id), sorted(requests))
        for turn, example in mine.items():
            *request, reply = example["messages"]
            assert without_weights(request) == requests[turn]["messages"]
            assert reply_actions(reply) == answers[turn]["actions"]


def reply_actions(reply: dict) -> list[str]:
    """The actions of an assistant reply, in either tool mode."""
    if reply.get("tool_calls"):
        return json.loads(reply["tool_calls"][0]["function"]["arguments"])["actions"]
    actions, problem = parse_text_actions(reply["content"], max_actions=5)
    assert problem is None, problem
    return actions


def test_quickstart_ends_with_a_working_view_command(quickstart):
    work, output, _ = quickstart
    command = re.search(r"CRAFTER_DB_URL=(\S+) \S+ -m synth_qwen\.view", output)
    assert command and command.group(1) == f"sqlite:///{work / 'traces.db'}"
    with ViewServer(command.group(1), work / "view.log") as server:
        runs = re.findall(r"<tr class='run'>", server.text("/"))
        assert len(runs) >= 3  # the teacher's play, the student's, the evaluations
