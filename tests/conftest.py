"""Fixtures shared by test modules."""
import pytest

from serve_helpers import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `serve` on 127.0.0.1 with the micro tiny model; one per test module."""
    running = Server(tmp_path_factory.mktemp("serve") / "data", serve_tiny_size="micro").start()
    yield running
    running.stop()
