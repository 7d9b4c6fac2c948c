"""`python -m synth_qwen.serve`, driven by the official openai SDK exactly as a user would.

Every test talks to a real server in a subprocess on a free port with its own data dir; the
training jobs are real (tiny model, a few steps, CPU).
"""
from __future__ import annotations

import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from synth_qwen.tiny_model import TINY_MODEL_ID
from serve_helpers import Server, crafter_examples, http, wait_for, wait_for_job, write_jsonl
from synth_qwen.inference_worker import RELEASED
from synth_qwen.sft_format import MIN_EXAMPLES

pytestmark = pytest.mark.timeout(300)
TINY = TINY_MODEL_ID
ONE_EPOCH = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)


@pytest.fixture(scope="module")
def trained_job(client, tmp_path_factory):
    """One real job: 12 per-turn examples with a weight-0 history turn, one epoch of 3 steps."""
    path = write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", crafter_examples(12, seed=1, with_history=True))
    training_file = client.files.create(file=path.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY, training_file=training_file.id, method=ONE_EPOCH, suffix="crafter", seed=7,
        extra_body={"upload_to_wasabi": False, "training_type": "sft_offline"})  # the original client's extras
    assert job.status == "validating_files"
    return wait_for_job(client, job.id)


def upload(client, tmp_path, rows, name="train.jsonl"):
    return client.files.create(file=write_jsonl(tmp_path / name, rows).open("rb"), purpose="fine-tune")


def test_files_create_list_retrieve_content_delete(client, server, tmp_path):
    rows = crafter_examples(MIN_EXAMPLES, seed=2)
    created = upload(client, tmp_path, rows)
    assert created.object == "file" and created.purpose == "fine-tune" and created.filename == "train.jsonl"
    assert created.bytes == (tmp_path / "train.jsonl").stat().st_size
    assert created.id in [f.id for f in client.files.list().data]
    # the same routes answer under /api and /api/v1 (the original project's defaults)
    for prefix in ("/api", "/api/v1"):
        other = OpenAI(base_url=server.url + prefix, api_key="x", max_retries=0)
        assert other.files.retrieve(created.id).bytes == created.bytes
    content = client.files.content(created.id).content
    assert [json.loads(line) for line in content.splitlines()] == rows
    assert client.files.delete(created.id).deleted is True
    with pytest.raises(openai.NotFoundError, match="No file"):
        client.files.retrieve(created.id)


def test_training_job_produces_a_model_that_answers(client, trained_job):
    job = trained_job
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{TINY}:crafter:{job.id}"
    assert job.trained_tokens > 0 and job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 4
    assert Path(job.model_extra["output_dir"], "model.safetensors").exists()

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [event for event in events if event.type == "metrics"]
    assert len(metrics) == 3 and all(event.data["train_loss"] > 0 for event in metrics)
    assert any("successfully completed" in event.message for event in events)

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [3]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-3"

    metrics_csv = client.files.content(job.result_files[0]).text
    assert metrics_csv.splitlines()[0].startswith("step,epoch,train_loss,train_mean_token_accuracy")
    assert len(metrics_csv.splitlines()) == 4

    listed = [model.id for model in client.models.list().data]
    assert TINY in listed and job.fine_tuned_model in listed
    assert client.models.retrieve(job.fine_tuned_model).owned_by == "user"

    example = crafter_examples(3, seed=99)[-1]
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=example["messages"][:-1],
                                           tools=example["tools"], temperature=0, max_tokens=8, seed=1)
    # Three steps from random weights teach no stop token yet: greedy decoding writes whitespace
    # (measured), so the reply runs into max_tokens and says so, as OpenAI does.
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.tool_calls is None
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens > 100
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_a_training_job_frees_the_inference_workers_models(client, server, tmp_path):
    """Never two processes holding a base model (Qwen3-4B: 8 GB each): a job's start empties the
    inference worker, whose next chat loads the model again."""
    example = crafter_examples(2, seed=5)[-1]

    def ask():
        return client.chat.completions.create(model=TINY, messages=example["messages"][:-1], max_tokens=2)
    ask()
    log = server.data_dir / "inference_worker.log"
    before = log.read_text().count(RELEASED)
    job = client.fine_tuning.jobs.create(model=TINY, method=ONE_EPOCH,
                                         training_file=upload(client, tmp_path, crafter_examples(MIN_EXAMPLES)).id)
    wait_for(lambda: log.read_text().count(RELEASED) > before)
    released = int(log.read_text().rsplit(RELEASED, 1)[-1].split()[0])
    assert released >= 1  # the tiny model it had loaded (and any fine-tuned one an earlier test chatted with)
    assert wait_for_job(client, job.id).status == "succeeded"
    assert ask().usage.completion_tokens >= 1


def test_job_listing_pages_with_a_cursor(client, trained_job, tmp_path):
    bad = upload(client, tmp_path, ["not json"] * MIN_EXAMPLES)
    second = client.fine_tuning.jobs.create(model=TINY, training_file=bad.id)
    first_page = client.fine_tuning.jobs.list(limit=1)
    assert [job.id for job in first_page.data] == [second.id] and first_page.has_more
    next_page = client.fine_tuning.jobs.list(limit=1, after=second.id)
    assert len(next_page.data) == 1 and next_page.data[0].id != second.id
    older = client.fine_tuning.jobs.list(limit=100, after=second.id)  # other tests of the module made jobs too
    assert trained_job.id in [job.id for job in older.data]


def test_a_fine_tuned_model_fine_tunes_further_from_its_own_weights(client, trained_job, tmp_path):
    """rounds' ROUNDS_INIT=previous: a job on an ft: model starts from that model's weights (its first
    loss on the same data and seed is below the base model's first loss) and is named after the root
    base model, as OpenAI names a fine-tune of a fine-tune."""
    same_data = upload(client, tmp_path, crafter_examples(12, seed=1, with_history=True))
    job = client.fine_tuning.jobs.create(model=trained_job.fine_tuned_model, training_file=same_data.id,
                                         method=ONE_EPOCH, suffix="again", seed=7)
    job = wait_for_job(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.model == trained_job.fine_tuned_model and job.fine_tuned_model == f"ft:{TINY}:again:{job.id}"

    def first_loss(job_id):
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        return min((e for e in events if e.type == "metrics"), key=lambda e: e.data["step"]).data["train_loss"]
    assert first_loss(job.id) < 0.95 * first_loss(trained_job.id)  # same data and seed: from base it is equal
    example = crafter_examples(3, seed=99)[-1]
    reply = client.chat.completions.create(model=job.fine_tuned_model, messages=example["messages"][:-1],
                                           tools=example["tools"], temperature=0, max_tokens=8)
    assert reply.model == job.fine_tuned_model


def test_the_same_job_again_trains_the_same_model(client, trained_job):
    """Reproducible: the same file, seed and hyperparameters give the same loss at every step and the same
    greedy reply, on serve's default path (bf16 autocast where the CPU has bf16, else fp32; on CPU never
    compiled: a compiled job's losses differed from step 2 on)."""
    again = client.fine_tuning.jobs.create(model=TINY, training_file=trained_job.training_file, method=ONE_EPOCH,
                                           suffix="crafter", seed=7)
    again = wait_for_job(client, again.id)
    assert again.status == "succeeded", again.error

    def losses(job_id):
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        return sorted((e.data["step"], e.data["train_loss"]) for e in events if e.type == "metrics")
    assert len(losses(trained_job.id)) == 3 and losses(again.id) == losses(trained_job.id)
    example = crafter_examples(3, seed=99)[-1]
    replies = [client.chat.completions.create(model=model, messages=example["messages"][:-1], tools=example["tools"],
                                              temperature=0, max_tokens=16).choices[0].message
               for model in (trained_job.fine_tuned_model, again.fine_tuned_model)]
    assert replies[0].content == replies[1].content and replies[0].tool_calls == replies[1].tool_calls


def test_training_changes_what_the_model_says(client, tmp_path):
    """Train only on `interact` calls with valid actions; the loss must fall steeply.

    A tiny model trained from scratch for two dozen CPU steps does not yet emit a clean tool call
    (measured with the micro size: greedy output `{"name": "arguments": "arguments": …`, where the
    untrained model emits only newlines), so this test checks what such a short run does guarantee:
    the training loss of the last steps is well below that of the first, the fine-tuned model's
    greedy answer differs from the base model's and starts writing a tool call's JSON (`{"name"`),
    which the untrained model does not, and anything returned as a tool call is well-formed.
    """
    rows = crafter_examples(24, seed=3)
    training_file = upload(client, tmp_path, rows)
    job = client.fine_tuning.jobs.create(model=TINY, training_file=training_file.id, seed=3, hyperparameters={
        "n_epochs": 4, "batch_size": 4, "learning_rate_multiplier": 3.0})
    job = wait_for_job(client, job.id)
    assert job.status == "succeeded", job.error
    losses = [event.data["train_loss"] for event in client.fine_tuning.jobs.list_events(job.id, limit=100).data
              if event.type == "metrics"][::-1]
    assert statistics.mean(losses[-3:]) < 0.6 * statistics.mean(losses[:3])

    held_out = crafter_examples(2, seed=1234)[-1]
    answers = {}
    for model in (TINY, job.fine_tuned_model):
        reply = client.chat.completions.create(model=model, messages=held_out["messages"][:-1],
                                               tools=held_out["tools"], temperature=0, max_tokens=30)
        message = reply.choices[0].message
        answers[model] = (message.content, [call.function.arguments for call in message.tool_calls or []])
        for call in message.tool_calls or []:  # whatever comes back as a tool call is well-formed
            assert call.id.startswith("call_") and isinstance(json.loads(call.function.arguments), dict)
    assert answers[TINY] != answers[job.fine_tuned_model]
    content, calls = answers[job.fine_tuned_model]
    assert calls or '{"name"' in (content or "")  # it learned to write a tool call
    assert '{"name"' not in (answers[TINY][0] or "")  # which the untrained model does not do


def test_concurrent_chat_requests_are_all_answered(client):
    example = crafter_examples(1, seed=5)[0]
    request = dict(model=TINY, messages=example["messages"][:-1], tools=example["tools"], max_tokens=4)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda seed: client.chat.completions.create(**request, seed=seed), range(8)))
    alone = [client.chat.completions.create(**request, seed=seed) for seed in range(8)]
    for reply, reply_alone in zip(replies, alone):
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 4
        # the seed makes sampling repeatable, also in a batch: no row sees another's tokens
        assert reply.choices[0].message == reply_alone.choices[0].message
    assert len({reply.choices[0].message.content for reply in replies}) > 1  # and the seeds do differ


def test_validation_failures_name_the_file_and_line(client, tmp_path):
    rows = crafter_examples(MIN_EXAMPLES, seed=4)
    broken = [json.dumps(row) for row in rows]
    broken[2] = json.dumps({"messages": [{"role": "robot", "content": "hi"}]})
    cases = {
        "line 3: messages[0]: role 'robot'": broken,
        "line 5: not valid JSON": broken[:2] + rows[2:4] + ["{oops"] + broken[5:],
        f"at least {MIN_EXAMPLES} are required": rows[:3],
    }
    tool_without_call = json.loads(json.dumps(rows[0]))
    tool_without_call["messages"].append({"role": "tool", "tool_call_id": "call_nowhere", "content": "ok"})
    cases["line 1: messages[3]: tool message needs a tool_call_id"] = [tool_without_call] + rows[1:]
    jobs = {}
    for expected, lines in cases.items():
        training_file = upload(client, tmp_path, lines, name=f"case{len(jobs)}.jsonl")
        jobs[expected] = (training_file.id, client.fine_tuning.jobs.create(model=TINY, training_file=training_file.id))
    for expected, (file_id, job) in jobs.items():
        job = wait_for_job(client, job.id)
        assert job.status == "failed" and job.error.code == "invalid_training_file"
        assert file_id in job.error.message and expected in job.error.message, job.error.message


def test_cancel_stops_a_running_job(client, tmp_path):
    training_file = upload(client, tmp_path, crafter_examples(MIN_EXAMPLES, seed=6))
    job = client.fine_tuning.jobs.create(model=TINY, training_file=training_file.id,
                                         hyperparameters={"n_epochs": 50, "batch_size": 1})
    wait_for_event(client, job.id, lambda event: event.type == "metrics")
    cancelled = client.fine_tuning.jobs.cancel(job.id)  # the SDK posts an empty JSON body
    assert cancelled.status == "cancelled"
    assert wait_for_job(client, job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="already cancelled"):
        client.fine_tuning.jobs.cancel(job.id)
    wait_for(lambda: http("GET", str(client.base_url).rstrip("/") + "/health")[1]["training_job"] is None)


def test_bad_requests_get_openai_style_errors(client, server):
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="nobody/nothing", messages=[{"role": "user", "content": "hi"}])
    assert error.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nobody/nothing")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model="nobody/nothing", training_file="file-abc")
    with pytest.raises(openai.NotFoundError, match="training_file"):
        client.fine_tuning.jobs.create(model=TINY, training_file="file-doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    with pytest.raises(openai.BadRequestError, match="n_epochs"):
        client.fine_tuning.jobs.create(model=TINY, training_file="file-abc", hyperparameters={"n_epochs": 0})
    for hyperparameters in ({"learning_rate_multiplier": 1e308}, {"batch_size": 10_000}, {"n_epochs": 2.5}):
        with pytest.raises(openai.BadRequestError, match=next(iter(hyperparameters))):
            client.fine_tuning.jobs.create(model=TINY, training_file="file-abc", hyperparameters=hyperparameters)
    with pytest.raises(openai.BadRequestError, match="'seed' must be an integer from 0 to 4294967295"):
        client.fine_tuning.jobs.create(model=TINY, training_file="file-abc", seed=10**30)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=TINY, messages=[])

    status, body = http("POST", server.url + "/v1/chat/completions", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "invalid_json"
    for query in ("limit=abc", "limit=0", "limit=10001"):
        status, body = http("GET", server.url + "/v1/files?" + query)
        assert status == 400 and body["error"]["param"] == "limit", query
    for escaping in ("/v1/files/..%2F..%2Fmodels.json", "/v1/files/file-x%2F..%2F..%2Fetc",
                     "/v1/fine_tuning/jobs/..%2Ffiles", "/api/files/%2Fetc%2Fpasswd/content"):
        status, body = http("GET", server.url + escaping)
        assert status in (400, 404) and "error" in body, escaping
    assert http("GET", server.url + "/v1/files/..%2F..%2Fmodels.json")[1]["error"]["code"] == "invalid_id"
    assert http("GET", server.url + "/v1/no/such/route")[1]["error"]["message"].startswith("GET /v1/no/such/route")
    assert http("GET", server.url + "/health")[1]["status"] == "ok"  # still serving


def test_auth_and_upload_limit(tmp_path):
    server = Server(tmp_path / "data", serve_api_key="sk-secret", serve_max_upload_mb=0.05,
                    serve_tiny_size="micro").start()
    try:
        wrong = OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="API key"):
            wrong.files.list()
        assert http("GET", server.url + "/v1/models")[0] == 401
        right = OpenAI(base_url=server.url + "/api/v1", api_key="sk-secret", max_retries=0)
        assert right.models.list().data[0].id == TINY
        small = right.files.create(file=("small.jsonl", b"{}\n" * 100), purpose="fine-tune")
        assert small.bytes == 300
        with pytest.raises(openai.APIStatusError, match="SERVE_MAX_UPLOAD_MB") as error:
            right.files.create(file=("big.jsonl", b"x" * 200_000), purpose="fine-tune")
        assert error.value.status_code == 413
        assert [f.id for f in right.files.list().data] == [small.id]
        assert "sk-secret" not in server.log()
    finally:
        server.stop()


def test_a_corrupt_job_json_does_not_stop_serve_from_starting(tmp_path):
    folder = tmp_path / "data" / "jobs" / "ftjob-broken1"
    folder.mkdir(parents=True)
    (folder / "job.json").write_text('{"id": "ftjob-broken1", "status": ')  # truncated by hand
    server = Server(tmp_path / "data", serve_tiny_size="micro").start()
    try:
        assert http("GET", server.url + "/v1/fine_tuning/jobs")[1]["data"] == []
        assert "warning: skipped" in server.log() and "ftjob-broken1" in server.log()
    finally:
        server.stop()


def test_state_survives_a_restart(tmp_path):
    server = Server(tmp_path / "data", serve_tiny_size="micro").start()
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        training_file = upload(client, tmp_path, crafter_examples(MIN_EXAMPLES, seed=8))
        job = client.fine_tuning.jobs.create(model=TINY, training_file=training_file.id,
                                             hyperparameters={"n_epochs": 50, "batch_size": 1})
        wait_for_event(client, job.id, lambda event: event.type == "metrics")
        server.restart()
        client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        assert client.files.retrieve(training_file.id).bytes == training_file.bytes
        job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "failed" and "server stopped" in job.error.message
        assert any(event.type == "metrics" for event in client.fine_tuning.jobs.list_events(job.id).data)
    finally:
        server.stop()


def wait_for_event(client, job_id: str, predicate, timeout_s: float = 120):
    wait_for(lambda: any(predicate(event) for event in client.fine_tuning.jobs.list_events(job_id, limit=100).data),
             timeout_s)
