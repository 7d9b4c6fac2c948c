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


CANARY_PASSWORD, CANARY_KEY = "canary-pw-5e1f0c", "sk-canary-key-9d2b"  # the role ensure_postgres.sh creates


@pytest.fixture
def canary_url():
    """A fresh database reached as the role whose password is the canary."""
    server = SERVER_URL.replace("synth_test:synth_test@", f"synth_canary:{CANARY_PASSWORD}@")
    try:
        conn = psycopg.connect(server, autocommit=True)
    except psycopg.OperationalError:
        pytest.skip("the synth_canary role is missing (scripts/ensure_postgres.sh creates it)")
    name = "synth_canary_" + uuid.uuid4().hex[:10]
    with conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield server.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_no_password_or_key_in_any_output(tmp_path, canary_url):
    """run_crafter, eval, filter_traces and replay against a password-protected DB and a keyed endpoint:
    the password and the key appear in no line printed, no file written and no row stored."""
    with ScriptedEndpoint() as endpoint:
        env = rollout_env(tmp_path, crafter_model="canary-model", crafter_episodes=2, crafter_max_steps=3,
                          crafter_db_url=canary_url, openai_base_url=endpoint.base_url, openai_api_key=CANARY_KEY,
                          eval_models="builtin:random canary-model", eval_episodes=2, eval_replays="false",
                          eval_report_dir=str(tmp_path / "report"), crafter_run_id="canary-run",
                          output_jsonl=str(tmp_path / "sft.jsonl"), min_total_reward=-1)
        outputs = [run_module(module, env, tmp_path) for module in
                   ("synth_qwen.run_crafter", "synth_qwen.eval", "synth_qwen.filter_traces")]
    engine = tracing.open_db(canary_url, create=False)
    session_id = tracing.sessions(engine)[0].session_id
    engine.dispose()
    outputs.append(run_module("synth_qwen.replay", dict(env, REPLAY_OUT=str(tmp_path / "r.gif")), tmp_path,
                              args=[session_id]))
    for done in outputs:
        assert done.returncode == 0, done.stderr
    texts = [done.stdout + done.stderr for done in outputs]
    assert all("synth_canary:***@" in text for text in texts[:3])  # the URL is shown, masked
    written = [path for path in tmp_path.rglob("*") if path.is_file() and path.suffix in (".json", ".md", ".jsonl", ".gif")]
    assert {path.suffix for path in written} == {".json", ".md", ".jsonl", ".gif"}
    texts += [path.read_bytes().decode("latin-1") for path in written]
    with psycopg.connect(canary_url) as conn:  # every text and JSON column of every table
        for (table,) in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"):
            texts += [json.dumps(row, default=str) for row in conn.execute(f"SELECT * FROM {table}")]
    assert len(texts) > 10
    leaks = [text[:200] for text in texts if CANARY_PASSWORD in text or CANARY_KEY in text]
    assert leaks == []


def test_a_role_that_may_not_create_the_trace_tables_gets_one_line(tmp_path, postgres_url):
    """A database whose schema this role may not create tables in: one line saying so, exit 1, before any
    work (not a ProgrammingError traceback from the first CREATE TABLE)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # as the database's owner
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    url = postgres_url.replace("synth_test:synth_test@", f"synth_canary:{CANARY_PASSWORD}@")
    try:
        psycopg.connect(url).close()
    except psycopg.OperationalError:
        pytest.skip("the synth_canary role is missing (scripts/ensure_postgres.sh creates it)")
    env = rollout_env(tmp_path, crafter_model="builtin:random", crafter_episodes=1, crafter_max_steps=1,
                      crafter_db_url=url)
    done = run_module("synth_qwen.run_crafter", env, tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "role synth_canary may not create tables in schema public" in done.stderr
    assert "Traceback" not in done.stderr and CANARY_PASSWORD not in done.stdout + done.stderr
