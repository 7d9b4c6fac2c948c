"""The same runner and tracing code against a real PostgreSQL (started by scripts/ensure_postgres.sh)."""
import json
import os
import uuid

import psycopg
import pytest

from synth_qwen import tracing
from synth_qwen.scripted_endpoint import ScriptedEndpoint
from rollout_helpers import rollout_env, run_module

SERVER_URL = os.environ.get("SYNTH_TEST_POSTGRES_URL", "")
pytestmark = pytest.mark.skipif(not SERVER_URL, reason="SYNTH_TEST_POSTGRES_URL is not set (make test sets it)")


@pytest.fixture
def postgres_url():
    name = "synth_test_" + uuid.uuid4().hex[:10]
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield SERVER_URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_rollouts_trace_into_postgres_and_requests_rebuild_exactly(tmp_path, postgres_url):
    with ScriptedEndpoint(latency_s=0.02) as endpoint:
        env = rollout_env(tmp_path, crafter_model="pg-model", crafter_episodes=8, crafter_max_steps=5,
                          crafter_concurrency=8, crafter_run_id="pg-run", crafter_db_url=postgres_url,
                          openai_base_url=endpoint.base_url)
        done = run_module("synth_qwen.run_crafter", env, tmp_path)
        assert done.returncode == 0, done.stderr
        again = run_module("synth_qwen.run_crafter", env, tmp_path)  # resume: nothing left to play
    assert again.returncode == 0 and "8 episodes already finished" in again.stderr
    engine = tracing.open_db(postgres_url, create=False)
    sessions = tracing.sessions(engine)
    assert sorted(s.seed for s in sessions) == list(range(1, 9))
    canonical = lambda body: json.dumps(body, sort_keys=True)
    rebuilt = sorted(canonical(body) for s in sessions for _, body in tracing.rebuild_requests(engine, s.session_id))
    assert rebuilt == sorted(canonical(body) for body in endpoint.requests)
    engine.dispose()


def test_builtin_policy_into_postgres(tmp_path, postgres_url):
    env = rollout_env(tmp_path, crafter_model="builtin:random", crafter_episodes=3, crafter_max_steps=10,
                      crafter_db_url=postgres_url)
    done = run_module("synth_qwen.run_crafter", env, tmp_path)
    assert done.returncode == 0, done.stderr
    engine = tracing.open_db(postgres_url, create=False)
    assert {s.status for s in tracing.sessions(engine)} <= {"max_steps", "died"}
    engine.dispose()
