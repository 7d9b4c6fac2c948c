"""Fleets: many run_crafter processes on one run id and one database (SQLite file or PostgreSQL).

Every seed must be finished exactly once, nothing lost, no traceback, also when a process is killed and
restarted, or frozen long enough for the others to take its episodes over.
"""
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from synth_qwen import tracing
from rollout_helpers import rollout_env

LEASE_S = 2  # short, so a takeover happens within the test


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    return request.getfixturevalue("postgres_url")


class Process:
    """A run_crafter subprocess whose stderr is followed line by line."""

    def __init__(self, env: dict, cwd: Path, name: str):
        self.name = name
        self.popen = subprocess.Popen([sys.executable, "-m", "synth_qwen.run_crafter"], env=env, cwd=cwd,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err_lines: list[str] = []
        self.reader = threading.Thread(target=self.read_stderr, daemon=True)
        self.reader.start()

    def read_stderr(self):
        for line in self.popen.stderr:
            self.err_lines.append(line)

    def wait_for_line(self, text: str, timeout_s: float = 120) -> None:
        deadline = time.time() + timeout_s
        while not any(text in line for line in self.err_lines):
            assert self.popen.poll() is None, f"{self.name} ended before printing {text!r}: {self.stderr}"
            assert time.time() < deadline, f"{self.name} never printed {text!r}: {self.stderr}"
            time.sleep(0.05)

    def finish(self, timeout_s: float = 180) -> tuple[int, str]:
        try:  # (not communicate(): it would read stderr too, under the reader; stdout is a short summary)
            self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise AssertionError(f"{self.name} did not end within {timeout_s}s: {self.stderr[-2000:]}") from None
        out = self.popen.stdout.read()
        self.reader.join(timeout=10)
        return self.popen.returncode, out

    @property
    def stderr(self) -> str:
        return "".join(self.err_lines)

    @property
    def pid(self) -> int:
        return self.popen.pid


def fleet_env(tmp_path, db_url, episodes, **values):
    values = dict(dict(crafter_model="builtin:random", crafter_run_id="fleet", crafter_seed=1, crafter_max_steps=60,
                       crafter_concurrency=3, crafter_lease_s=LEASE_S), **values)
    return rollout_env(tmp_path, crafter_episodes=episodes, crafter_db_url=db_url, **values)


def episodes_by_owner_pid(db_url: str, pid: int, status_filter) -> int:
    engine = tracing.open_db(db_url, create=False)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(tracing.session_traces).where(
                tracing.session_traces.c.owner.like(f"%:{pid}:%"), status_filter)).scalar()
    finally:
        engine.dispose()


def holds_episodes(db_url: str, pid: int, incomplete) -> bool:
    try:
        return episodes_by_owner_pid(db_url, pid, incomplete) > 0
    except (tracing.MissingDatabase, sa.exc.DBAPIError):  # the processes are still creating the DB
        return False


def inside_a_write(db_url: str) -> bool:
    """Whether some process is inside a write transaction. One frozen there keeps its locks (SQLite's one
    write lock; on PostgreSQL the rows it wrote) until it resumes: a limit of locks, not of the lease.
    On PostgreSQL a statement still running counts too: frozen before its COMMIT, it holds its rows
    once the server finishes it."""
    path = tracing.sqlite_path(db_url)
    if path is None:
        engine = sa.create_engine(tracing.sqlalchemy_url(db_url))
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND (state = 'active' OR state LIKE 'idle in transaction%')")).scalar() > 0
        finally:
            engine.dispose()
    db = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        db.close()


def freeze_while_playing(process: Process, db_url: str, incomplete, timeout_s: float = 120) -> int:
    """SIGSTOP the process at a moment it holds episodes in flight; how many it holds."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert process.popen.poll() is None, f"{process.name} ended first: {process.stderr}"
        if holds_episodes(db_url, process.pid, incomplete):
            os.kill(process.pid, signal.SIGSTOP)
            held = episodes_by_owner_pid(db_url, process.pid, incomplete)
            if held and not inside_a_write(db_url):
                return held
            os.kill(process.pid, signal.SIGCONT)  # it finished them, or froze inside a write: again
        time.sleep(0.02)
    raise AssertionError(f"{process.name} never held an episode: {process.stderr}")


def assert_every_seed_finished_once(db_url: str, episodes: int) -> None:
    engine = tracing.open_db(db_url, create=False)
    try:
        sessions = tracing.sessions(engine)
    finally:
        engine.dispose()
    assert sorted(s.seed for s in sessions) == list(range(1, episodes + 1))
    assert all(s.finished for s in sessions), [s.seed for s in sessions if not s.finished]


def test_three_processes_one_killed_and_restarted_finish_every_seed_once(tmp_path, db_url):
    episodes = 36
    env = fleet_env(tmp_path, db_url, episodes)
    fleet = [Process(env, tmp_path, f"process {i}") for i in range(3)]
    victim = fleet[2]
    incomplete = tracing.session_traces.c.status == "incomplete"
    freeze_while_playing(victim, db_url, incomplete)  # it holds episodes in flight
    victim.popen.send_signal(signal.SIGKILL)
    victim.finish()
    restarted = Process(env, tmp_path, "restarted process")
    survivors = [fleet[0], fleet[1], restarted]
    results = [process.finish() for process in survivors]

    for process, (code, out) in zip(survivors, results):
        assert code == 0, process.stderr
        assert "Traceback" not in process.stderr
        assert f"episodes {episodes} " in out  # every process ends with the whole run
    assert episodes_by_owner_pid(db_url, victim.pid, incomplete) == 0
    assert_every_seed_finished_once(db_url, episodes)
    # the episodes each survivor reports, plus those the victim wrote before it died: each seed once
    reported = sum(p.stderr.count(" seed=") for p in survivors)
    assert reported + episodes_by_owner_pid(db_url, victim.pid, ~incomplete) == episodes


def test_a_frozen_process_loses_its_episodes_to_the_others_and_drops_its_late_copies(tmp_path, db_url):
    episodes = 8
    env = fleet_env(tmp_path, db_url, episodes, crafter_concurrency=2, crafter_max_steps=200)
    frozen = Process(env, tmp_path, "frozen process")
    frozen.wait_for_line("seed=")
    freeze_while_playing(frozen, db_url, tracing.session_traces.c.status == "incomplete")  # alive, no heartbeat
    try:
        taker = Process(env, tmp_path, "second process")
        code, out = taker.finish()
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert code == 0 and f"episodes {episodes} " in out, taker.stderr
    frozen_code, frozen_out = frozen.finish()
    assert frozen_code == 0, frozen.stderr
    assert "were taken over by another process while this one played them" in frozen.stderr
    assert "Traceback" not in frozen.stderr + taker.stderr
    assert f"episodes {episodes} " in frozen_out
    assert_every_seed_finished_once(db_url, episodes)


def test_many_claims_of_one_seed_at_once_have_exactly_one_winner(db_url):
    engine = tracing.open_db(db_url)
    tracing.ensure_experiment(engine, "race", "rollout", {})
    barrier = threading.Barrier(8)
    wins = []

    def claim(index):
        barrier.wait()
        wins.append(tracing.claim_seed(engine, {"session_id": f"sess_{index}", "experiment_id": "race",
                                                "run_id": "race", "seed": 7, "owner": f"owner-{index}"}))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 7 + [True]
    engine.dispose()


def test_a_live_episode_is_never_taken_over_and_a_stale_one_is(db_url):
    engine = tracing.open_db(db_url)
    tracing.ensure_experiment(engine, "lease", "rollout", {})
    row = lambda seed, owner: {"session_id": f"sess_{owner}_{seed}", "experiment_id": "lease", "run_id": "lease",
                               "seed": seed, "owner": owner}
    assert tracing.claim_seed(engine, row(1, "a")) and tracing.claim_seed(engine, row(2, "a"))
    taken, states = tracing.take_over_stale(engine, "lease", 1, 2, "b", 60, lambda seed: row(seed, "b"))
    assert taken is None and states.held == {1: "a", 2: "a"}  # a heartbeats: hands off
    with engine.begin() as conn:  # a stops heartbeating seed 2
        conn.execute(tracing.session_traces.update().where(tracing.session_traces.c.seed == 2)
                     .values(heartbeat_at=time.time() - 120))
    taken, _ = tracing.take_over_stale(engine, "lease", 1, 2, "b", 60, lambda seed: row(seed, "b"))
    assert taken["seed"] == 2 and taken["owner"] == "b"
    summary = {"status": "died", "total_reward": 0.0, "achievements": [], "num_achievements": 0}
    assert not tracing.finish_session(engine, "sess_a_2", summary, [], [], [])  # a's late copy is refused
    assert tracing.finish_session(engine, "sess_b_2", summary, [], [], [])
    with engine.connect() as conn:
        owners = dict(conn.execute(sa.select(tracing.session_traces.c.seed, tracing.session_traces.c.owner)).all())
    assert owners == {1: "a", 2: "b"}
    engine.dispose()


def test_a_long_episode_keeps_its_lease_while_it_plays(tmp_path):
    """A builtin policy never waits on the network, yet the heartbeat must run while it plays: a second
    process must wait for the long episode, not take it over after one lease."""
    db_url = f"sqlite:///{tmp_path / 'long.db'}"
    env = fleet_env(tmp_path, db_url, 1, crafter_model="builtin:expert", crafter_max_steps=1500,
                    crafter_lease_s=1)
    first = Process(env, tmp_path, "first process")
    deadline = time.time() + 60
    while not holds_episodes(db_url, first.pid, tracing.session_traces.c.status == "incomplete"):
        assert time.time() < deadline and first.popen.poll() is None, first.stderr
        time.sleep(0.05)
    second = Process(env, tmp_path, "second process")
    results = [first.finish(timeout_s=60), second.finish(timeout_s=60)]  # two processes taking it from
    # each other (no heartbeat while playing) would never end
    assert [code for code, _ in results] == [0, 0], first.stderr + second.stderr
    assert first.stderr.count(" seed=") == 1 and " seed=" not in second.stderr  # played once, by the first
    assert "taken over" not in first.stderr
    assert_every_seed_finished_once(db_url, 1)
