"""Helpers for tests that run the real run_crafter module (in-process or as a subprocess)."""
import os
import time
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from synth_qwen import tracing

REPO = Path(__file__).resolve().parents[1]


def rollout_env(tmp_path: Path, **values) -> dict:
    """A clean environment for a run_crafter subprocess: no inherited CRAFTER_/OPENAI_ settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CRAFTER_", "OPENAI_", "SYNTH_", "LEARNING_", "EVAL_", "SFT_", "QWEN_"))}
    env.update({"CRAFTER_DB_URL": f"sqlite:///{tmp_path / 'traces.db'}", "PYTHONPATH": str(REPO)})
    env.update({k.upper(): str(v) for k, v in values.items()})
    return env


def run_module(module: str, env: dict, cwd: Path, timeout: float = 300, args: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


FILE_SIZE_CAPPED = """
import resource, runpy, sys
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: a write past it fails (EFBIG)
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
"""


def run_module_capped(module: str, file_bytes: int, env: dict, cwd: Path, timeout: float = 300,
                      args: list[str] = ()) -> subprocess.CompletedProcess:
    """run_module, but no file the process writes may grow past `file_bytes` (RLIMIT_FSIZE): a write
    past it fails with "File too large", as one on a full disk fails with "No space left on device"."""
    return subprocess.run([sys.executable, "-c", FILE_SIZE_CAPPED, str(file_bytes), module, *args],
                          env={**env, "PYTHONDONTWRITEBYTECODE": "1"}, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def db_sessions(db_path: Path) -> list[tracing.Session]:
    engine = tracing.open_db(f"sqlite:///{db_path}", create=False)
    try:
        return tracing.sessions(engine)
    finally:
        engine.dispose()


def count_rows(db_path: Path, table: sa.Table, session_id: str) -> int:
    engine = tracing.open_db(f"sqlite:///{db_path}", create=False)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(table)
                                .where(table.c.session_id == session_id)).scalar()
    finally:
        engine.dispose()


def finished_count(db_path: Path) -> int:
    """Episodes finished so far (0 while the runner is still creating the DB)."""
    if not db_path.exists():
        return 0
    try:
        return sum(s.status != "incomplete" for s in db_sessions(db_path))
    except (tracing.MissingDatabase, sa.exc.OperationalError):
        return 0


def wait_until_finished(db_path: Path, episodes: int, timeout_s: float = 120) -> None:
    """Poll the DB of a running run_crafter until `episodes` episodes have finished."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and finished_count(db_path) < episodes:
        time.sleep(0.2)
