"""Fixtures shared by test modules."""
import os
import uuid

import pytest

from serve_helpers import Server


FULLSIZE_REPORT = []  # lines the full-size test measured, printed at the end of the run


def pytest_collection_modifyitems(config, items):
    """SYNTH_SKIP_FULLSIZE=1 skips the tests marked fullsize (~20 minutes on 2 cores); CI runs them."""
    if os.environ.get("SYNTH_SKIP_FULLSIZE", "").lower() in ("1", "true", "yes"):
        skip = pytest.mark.skip(reason="SYNTH_SKIP_FULLSIZE is set")
        for item in items:
            if "fullsize" in item.keywords:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if FULLSIZE_REPORT:
        terminalreporter.section("full-size run (local/qwen3-4b-shaped)")
        for line in FULLSIZE_REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def fullsize_report():
    return FULLSIZE_REPORT


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `serve` on 127.0.0.1 with the micro tiny model; one per test module."""
    running = Server(tmp_path_factory.mktemp("serve") / "data", serve_tiny_size="micro").start()
    yield running
    running.stop()


POSTGRES_SERVER_URL = os.environ.get("SYNTH_TEST_POSTGRES_URL", "")  # make test sets it (scripts/ensure_postgres.sh)


@pytest.fixture
def postgres_url():
    """A fresh database on the test PostgreSQL server, dropped afterwards."""
    if not POSTGRES_SERVER_URL:
        pytest.skip("SYNTH_TEST_POSTGRES_URL is not set (make test sets it)")
    import psycopg
    name = "synth_test_" + uuid.uuid4().hex[:10]
    with psycopg.connect(POSTGRES_SERVER_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield POSTGRES_SERVER_URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(POSTGRES_SERVER_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
