"""sft_kickoff against the real `serve` (and a fault-injecting proxy in front of it)."""
import asyncio
import json
import threading

import openai
import pytest
from aiohttp import ClientSession, web

from rollout_helpers import rollout_env, run_module, run_module_capped
from synth_qwen import sft_kickoff
from synth_qwen.settings import KickoffSettings, load
from synth_qwen.tiny_model import TINY_MODEL_ID
from serve_helpers import crafter_examples, preference_pairs, write_jsonl

TINY = TINY_MODEL_ID


@pytest.fixture(scope="module")
def training_jsonl(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", crafter_examples(12, seed=3))


def kickoff(tmp_path, base_url, jsonl, **values):
    settings = dict(learning_v2_base_url=base_url, synth_api_key="sk_live_test", qwen_base_model=TINY,
                    qwen_training_jsonl=jsonl, sft_poll_interval_s=0.3, sft_n_epochs=1, sft_batch_size=4,
                    sft_state_file=tmp_path / "state.json")
    settings.update(values)
    return run_module("synth_qwen.sft_kickoff", rollout_env(tmp_path, **settings), tmp_path, timeout=400)


def test_success_prints_ids_events_and_the_model(tmp_path, server, training_jsonl):
    done = kickoff(tmp_path, server.url + "/api", training_jsonl, sft_suffix="crafter")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "12 examples validated locally" in out and "-> file id file-" in out
    state = json.loads((tmp_path / "state.json").read_text())
    assert f"created fine-tuning job {state['job_id']}" in out
    assert f"fine-tuned model: {state['fine_tuned_model']}" in out
    assert state["fine_tuned_model"].startswith(f"ft:{TINY}:") and state["status"] == "succeeded"
    assert "metrics:" in out and "trained tokens:" in out
    assert f'CRAFTER_MODEL="{state["fine_tuned_model"]}"' in out and "python -m synth_qwen.eval" in out
    assert "sk_live_test" not in out + done.stderr
    # a rerun with the same data and settings reuses the finished job instead of training again,
    # also when the same service is reached by another URL (the quickstart's port changes)
    again = kickoff(tmp_path, server.url + "/v1", training_jsonl, sft_suffix="crafter")
    assert again.returncode == 0 and f"reusing job {state['job_id']}" in again.stdout
    assert "-> file id" not in again.stdout
    # a job the service does not know (another server's) is not reused: a new one starts
    (tmp_path / "state.json").write_text(json.dumps(dict(state, job_id="ftjob-000000000000000000000000")))
    fresh = kickoff(tmp_path, server.url + "/api", training_jsonl, sft_suffix="crafter")
    assert fresh.returncode == 0 and "reusing job" not in fresh.stdout and "created fine-tuning job" in fresh.stdout


def test_the_job_is_created_with_method_never_the_deprecated_hyperparameters(monkeypatch):
    for name in ("SFT_METHOD", "SFT_DPO_BETA", "SFT_EXTRA_JSON", "SFT_N_EPOCHS", "SFT_BATCH_SIZE",
                 "SFT_LEARNING_RATE_MULTIPLIER", "SFT_SUFFIX", "SFT_SEED"):
        monkeypatch.delenv(name, raising=False)
    supervised = sft_kickoff.job_body(load(KickoffSettings, {"sft_n_epochs": 2}), "file-a", None)
    assert "hyperparameters" not in supervised
    assert supervised["method"] == {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": "auto"}}}
    dpo = sft_kickoff.job_body(load(KickoffSettings, {"sft_method": "dpo", "sft_dpo_beta": 0.2}), "file-a", "file-b")
    assert dpo["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": "auto", "beta": 0.2}}}
    assert dpo["validation_file"] == "file-b" and "hyperparameters" not in dpo
    # Synth's payload overrides still land, deep-merged over the body
    extra = {"upload_to_wasabi": True, "hyperparameters": {"training_type": "sft"},
             "method": {"dpo": {"hyperparameters": {"beta": 0.5}}}}
    synth = sft_kickoff.job_body(load(KickoffSettings, {"sft_method": "dpo", "sft_extra_json": extra}), "file-a", None)
    assert synth["upload_to_wasabi"] is True and synth["hyperparameters"] == {"training_type": "sft"}
    assert synth["method"]["dpo"]["hyperparameters"] == {"n_epochs": 1, "batch_size": 4,
                                                         "learning_rate_multiplier": "auto", "beta": 0.5}


def test_a_dpo_job_from_preference_pairs(tmp_path, server):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_pairs(12, seed=3))
    done = kickoff(tmp_path, server.url + "/api", pairs, sft_method="dpo", sft_dpo_beta=0.2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "12 preference pairs validated locally" in done.stdout and "method dpo" in done.stdout
    assert "reward_accuracy" in done.stdout  # the metrics events, as printed
    state = json.loads((tmp_path / "state.json").read_text())
    job = openai.OpenAI(base_url=server.url + "/v1", api_key="x").fine_tuning.jobs.retrieve(state["job_id"])
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    assert state["fine_tuned_model"] == job.fine_tuned_model and job.fine_tuned_model.startswith(f"ft:{TINY}:")
    # chat data is not preference data: refused before anything is uploaded
    sft = kickoff(tmp_path, server.url + "/api", write_jsonl(tmp_path / "sft.jsonl", crafter_examples(12, seed=3)),
                  sft_method="dpo", sft_force_new=True)
    assert sft.returncode == 1 and "not valid preference data (SFT_METHOD=dpo)" in sft.stdout
    assert "line 1: 'input' must be an object" in sft.stdout and "file id" not in sft.stdout


def test_resume_with_job_id_and_failed_job_exits_1_with_the_service_message(tmp_path, server, training_jsonl):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
    broken = write_jsonl(tmp_path / "broken.jsonl", crafter_examples(11, seed=4) + ['{"messages": "nope"}'])
    uploaded = client.files.create(file=open(broken, "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=TINY, training_file=uploaded.id)
    done = kickoff(tmp_path, server.url + "/api", training_jsonl, sft_job_id=job.id)
    assert done.returncode == 1
    assert f"error: job {job.id} failed" in done.stdout and "line 12" in done.stdout


def test_a_state_file_the_disk_refuses_is_one_line_with_what_to_run_next(tmp_path, server, training_jsonl):
    """No file may grow past 16 bytes (RLIMIT_FSIZE): the state file cannot be written, as on a full disk."""
    state = tmp_path / "state.json"
    settings = dict(learning_v2_base_url=server.url + "/api", synth_api_key="sk_live_test", qwen_base_model=TINY,
                    qwen_training_jsonl=training_jsonl, sft_poll_interval_s=0.3, sft_state_file=state)
    before = run_module_capped("synth_qwen.sft_kickoff", 16, rollout_env(tmp_path, **settings), tmp_path)
    assert before.returncode == 1 and "Traceback" not in before.stderr, before.stderr
    assert before.stdout.splitlines()[-1] == (f"error: cannot write the state file SFT_STATE_FILE={state} (File too "
                                              "large): no job was started; free space, then rerun the same command")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
    job = client.fine_tuning.jobs.create(model=TINY, training_file=client.files.create(
        file=open(training_jsonl, "rb"), purpose="fine-tune").id, hyperparameters={"n_epochs": 1})
    following = run_module_capped("synth_qwen.sft_kickoff", 16, rollout_env(tmp_path, **settings, sft_job_id=job.id),
                                  tmp_path)
    assert following.returncode == 1 and "Traceback" not in following.stderr, following.stderr
    assert following.stdout.splitlines()[-1] == (
        f"error: cannot write the state file SFT_STATE_FILE={state} (File too large): job {job.id} is on the service "
        f"and goes on; free space, then follow it with: SFT_JOB_ID={job.id} python -m synth_qwen.sft_kickoff")
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith((".", "state"))] == []  # no half file


def test_local_validation_names_the_line(tmp_path, server):
    bad = crafter_examples(12, seed=5)
    bad[6]["messages"][-1]["tool_calls"][0]["function"]["arguments"] = "{not json"
    done = kickoff(tmp_path, server.url + "/api", write_jsonl(tmp_path / "bad.jsonl", bad))
    assert done.returncode == 1 and "line 7" in done.stdout
    assert "file id" not in done.stdout  # nothing was uploaded


def test_timeout_prints_how_to_keep_following(tmp_path, server):
    big = write_jsonl(tmp_path / "big.jsonl", crafter_examples(16, seed=6))  # a worker's start alone takes > 1 s
    done = kickoff(tmp_path, server.url + "/api", big, sft_timeout_s=1)
    assert done.returncode == 124
    state = json.loads((tmp_path / "state.json").read_text())
    assert f"SFT_JOB_ID={state['job_id']} python -m synth_qwen.sft_kickoff" in done.stdout
    resumed = kickoff(tmp_path, server.url + "/api", big, sft_job_id=state["job_id"])
    assert resumed.returncode == 0 and "fine-tuned model: ft:" in resumed.stdout


class FaultProxy:
    """Forwards to serve, but answers the first request of each listed path with 429 then 500."""

    def __init__(self, target: str, faulty: tuple[str, ...]):
        self.target, self.faulty, self.injected = target, faulty, []

    def __enter__(self):
        ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.serve(ready)), daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)

    async def serve(self, ready):
        self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        ready.set()
        await self.stop.wait()
        await runner.cleanup()

    async def forward(self, request):
        key = (request.method, request.path.rstrip("/").split("/")[-1])
        hits = sum(1 for k in self.injected if k == key)
        if any(request.path.endswith(p) for p in self.faulty) and hits < 2:
            self.injected.append(key)
            status = 429 if hits == 0 else 500
            return web.json_response({"error": {"message": "injected", "type": "x", "param": None, "code": None}},
                                     status=status, headers={"Retry-After": "0.1"})
        body = await request.read()
        async with ClientSession() as session:
            async with session.request(request.method, self.target + request.path_qs, data=body,
                                       headers={k: v for k, v in request.headers.items() if k.lower() != "host"}) as upstream:
                return web.Response(body=await upstream.read(), status=upstream.status,
                                    content_type=upstream.content_type)


def test_429_and_500_are_retried(tmp_path, server, training_jsonl):
    with FaultProxy(server.url, faulty=("/files", "/fine_tuning/jobs", "/events")) as proxy:
        done = kickoff(tmp_path, proxy.url + "/api", training_jsonl, sft_suffix="proxied")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(proxy.injected) >= 4 and "fine-tuned model: ft:" in done.stdout


@pytest.mark.parametrize("name,value,expected", [
    ("sft_extra_json", "{oops", "SFT_EXTRA_JSON='{oops' is invalid: not valid JSON"),
    ("learning_v2_base_url", "localhost:8000/api", "LEARNING_V2_BASE_URL='localhost:8000/api' is invalid"),
    ("sft_n_epochs", "many", "SFT_N_EPOCHS='many' is invalid"),
    ("sft_n_epochs", "-1", "SFT_N_EPOCHS='-1' is invalid: must be 'auto' or an integer from 1 to 50"),
    ("sft_batch_size", "0", "SFT_BATCH_SIZE='0' is invalid: must be 'auto' or an integer from 1 to 256"),
    ("sft_learning_rate_multiplier", "-2", "SFT_LEARNING_RATE_MULTIPLIER='-2' is invalid: must be 'auto' or a number"),
    ("sft_learning_rate_multiplier", "1e308", "SFT_LEARNING_RATE_MULTIPLIER='1e308' is invalid"),
    ("sft_seed", str(10**30), "is invalid: must be an integer from 0 to 4294967295"),
    ("sft_method", "reinforcement", "SFT_METHOD='reinforcement' is invalid"),
    ("sft_dpo_beta", "0", "SFT_DPO_BETA='0' is invalid: must be 'auto' or a number from 0.001 to 10"),
    ("qwen_training_jsonl", "missing.jsonl", "QWEN_TRAINING_JSONL='missing.jsonl' is invalid: no such file"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, training_jsonl, name, value, expected):
    done = kickoff(tmp_path, "http://127.0.0.1:9/api", training_jsonl, **{name: value})
    assert done.returncode == 2 and expected in done.stderr
    assert done.stderr.strip().count("\n") == 0
