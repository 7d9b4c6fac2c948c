"""serve under load (bench/bench_serve_load.py, small): while a job trains, 16 concurrent chats and a
poller of job status and the file list all get answers, none a 5xx. Timing is the bench's to report,
not this test's to assert (this machine's cores are shared)."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from serve_helpers import REPO
from synth_qwen.sft_format import MIN_EXAMPLES

pytestmark = pytest.mark.timeout(400)


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_serve_load", REPO / "bench" / "bench_serve_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_call_is_answered_while_a_job_trains_under_16_concurrent_chats(tmp_path):
    bench = load_bench()
    load = bench.Load(size="micro", examples=MIN_EXAMPLES, epochs=1, chats=16, turns=2, max_tokens=8, limit_s=300)
    calls, idle = bench.measure(tmp_path, load)
    assert calls.unanswered == [] and calls.server_errors() == {}, (calls.unanswered, calls.statuses)
    assert calls.job_status == "succeeded"
    assert calls.statuses == {(route, 200): len(seconds) for route, seconds in calls.seconds.items()}  # all 200
    assert len(calls.seconds["POST /chat/completions"]) == 32 and len(calls.seconds[bench.STATUS_ROUTE]) >= 2
    assert len(calls.seconds["GET /files"]) >= 2 and len(idle) == bench.IDLE_POLLS
