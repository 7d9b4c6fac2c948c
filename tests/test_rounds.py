"""rounds' own checks, before any work: seeds, settings, and what it prints (the whole loop runs in
test_quickstart)."""
import os
import subprocess
import sys

import pytest

from synth_qwen.rounds import StageFailed, run_module, training_seeds
from synth_qwen.settings import RoundsSettings

ROUNDS_ENV = {name.upper() for name in RoundsSettings.model_fields}


def rounds_cli(tmp_path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ROUNDS_ENV}
    environ.update({k: str(v) for k, v in env.items()}, ROUNDS_DIR=str(tmp_path / "rounds"))
    return subprocess.run([sys.executable, "-m", "synth_qwen.rounds"], env=environ, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def test_training_seeds_are_contiguous_blocks_after_the_teachers():
    s = RoundsSettings(crafter_seed=5, rounds=3, rounds_teacher_episodes=40, rounds_student_episodes=20)
    assert [training_seeds(s, r) for r in range(3)] == [(5, 40), (45, 20), (65, 20)]


@pytest.mark.parametrize("env,expected", [
    ({"CRAFTER_SEED": "99990"}, "training seeds 99990..100049 overlap the eval seeds 100000..100019"),
    ({"ROUNDS": "4", "ROUNDS_STUDENT_EPISODES": "40000", "EVAL_SEED": "100"},
     "overlap the eval seeds 100..119"),
    ({"ROUNDS_EVAL_TEMPERATURES": "0.7 5"}, "ROUNDS_EVAL_TEMPERATURES='0.7 5' is invalid: temperatures are between 0 and 2"),
    ({"ROUNDS_TEACHER": "builtin:random"}, "ROUNDS_TEACHER='builtin:random' is invalid: teachers are builtin:expert"),
    ({"ROUNDS_DATA": "best"}, "ROUNDS_DATA='best' is invalid"),
])
def test_bad_settings_stop_before_any_work_with_one_line(tmp_path, env, expected):
    done = rounds_cli(tmp_path, **env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
    assert not (tmp_path / "rounds").exists()  # nothing was started


def test_a_stage_line_never_shows_a_password(capfd):
    """Each stage is printed as a command a user could rerun; a DB password is masked there (and the
    stage, unable to connect, fails with its own message: rounds says which stage, to resume)."""
    with pytest.raises(StageFailed, match="filter_traces exited with status 1"):
        run_module("filter_traces", CRAFTER_DB_URL="postgresql://crafter:canary-secret@127.0.0.1:1/traces",
                   OUTPUT_JSONL="unused.jsonl")
    printed = capfd.readouterr()
    assert "CRAFTER_DB_URL=postgresql://crafter:***@127.0.0.1:1/traces" in printed.out
    assert "canary-secret" not in printed.out + printed.err
