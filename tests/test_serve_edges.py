"""`serve` against bad clients, restarts and training that cannot work.

Malformed requests are sent raw with aiohttp (the SDK cannot send them); everything else goes through
the official openai SDK. Every answer to a bad request is a 4xx with OpenAI's error shape; the one
unexpected failure gets a JSON 500, never a bare page.
"""
from __future__ import annotations

import asyncio
import json
import math

import aiohttp
import yarl
import openai
import pytest
from openai import OpenAI

from serve_helpers import Server, crafter_examples, wait_for, wait_for_job, write_jsonl
from synth_qwen.sft_format import MIN_EXAMPLES
from synth_qwen.tiny_model import TINY_MODEL_ID

pytestmark = pytest.mark.timeout(300)
BOUNDARY = "b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, value: bytes, filename: str | None = None, header: str | None = None) -> bytes:
    disposition = header or f'Content-Disposition: form-data; name="{name}"' + (
        f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\n{disposition}\r\n\r\n".encode() + value + b"\r\n"


UPLOAD = part("purpose", b"fine-tune") + part("file", b'{"messages": []}\n', "t.jsonl") + f"--{BOUNDARY}--\r\n".encode()
MALFORMED_UPLOADS = {  # name: (content type, body)
    "no boundary": ("multipart/form-data", UPLOAD),
    "garbage": (MULTIPART, b"\x00\x01 this is not multipart at all"),
    "truncated": (MULTIPART, UPLOAD[:len(UPLOAD) // 2]),
    "bad part header": (MULTIPART, part("", b"fine-tune", header="Content-Disposition form-data name=purpose")
                        + f"--{BOUNDARY}--\r\n".encode()),
    "non-UTF-8 purpose": (MULTIPART, part("purpose", b"fine-\xff\xfe") + part("file", b"{}\n", "t.jsonl")
                          + f"--{BOUNDARY}--\r\n".encode()),
}


def send(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, str, dict | str]:
    """One raw request: (status, content type, JSON body or text)."""
    async def go():
        async with aiohttp.ClientSession() as session:
            # encoded=True: the URL goes out as written (no ".." folded away by the client)
            async with session.request(method, yarl.URL(url, encoded=True), data=body, headers=headers or {}) as response:
                text = await response.text()
                try:
                    return response.status, response.content_type, json.loads(text)
                except ValueError:
                    return response.status, response.content_type, text
    return asyncio.run(go())


def assert_openai_error(status: int, content_type: str, body, expected_status: int) -> dict:
    assert (status, content_type) == (expected_status, "application/json"), body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="sk-local", max_retries=0)


@pytest.mark.parametrize("case", MALFORMED_UPLOADS)
def test_a_malformed_upload_is_a_400_and_stores_nothing(server, client, case):
    content_type, body = MALFORMED_UPLOADS[case]
    before = [f.id for f in client.files.list().data]
    error = assert_openai_error(*send("POST", server.url + "/v1/files", body, {"Content-Type": content_type}), 400)
    assert error["type"] == "invalid_request_error" and error["message"], error
    assert [f.id for f in client.files.list().data] == before
    assert not list((server.data_dir / "files").glob(".upload-*"))  # no temp file left


def test_a_well_formed_raw_upload_is_accepted(server):
    status, _, body = send("POST", server.url + "/v1/files", UPLOAD, {"Content-Type": MULTIPART})
    assert status == 200 and body["purpose"] == "fine-tune", body


@pytest.mark.parametrize("message,param", [
    ({"role": "user", "content": {"text": "hi"}}, "messages[0].content"),
    ({"role": "user"}, "messages[0].content"),
    ({"role": "system", "content": None}, "messages[0].content"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, "messages[0].content"),
    ({"role": "user", "content": 42}, "messages[0].content"),
])
def test_a_chat_message_without_text_content_is_a_400(client, message, param):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=TINY_MODEL_ID, messages=[message])
    assert error.value.body["param"] == param


def test_content_as_text_parts_and_an_assistant_tool_call_without_content_are_accepted(client):
    call = {"id": "call_1", "type": "function", "function": {"name": "interact", "arguments": '{"actions": ["noop"]}'}}
    reply = client.chat.completions.create(model=TINY_MODEL_ID, max_tokens=4, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Observation:"}, {"type": "text", "text": "a tree"}]},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        {"role": "user", "content": "next"}])
    assert reply.choices[0].message.role == "assistant"


def test_an_unexpected_failure_is_a_json_500_and_serving_goes_on(server, client):
    odd = server.data_dir / "files" / "file-handmade1.json"
    odd.write_text('{"id": "file-handmade1"}')  # valid JSON, not a file record: listing cannot sort it
    try:
        error = assert_openai_error(*send("GET", server.url + "/v1/files"), 500)
        assert error["type"] == "server_error" and error["code"] == "internal_error"
        assert "Traceback" in server.log() and "GET /v1/files failed" in server.log()
    finally:
        odd.unlink()
    assert client.models.list().data  # still serving


def test_models_come_only_from_serve_models_dir(tmp_path):
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    for folder in (models / "org" / "mine", elsewhere / "theirs"):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    server = Server(tmp_path / "data", serve_tiny_size="micro", serve_models_dir=models).start()
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        assert client.models.retrieve("org/mine").id == "org/mine"
        for probe in (f"/{elsewhere / 'theirs'}", f"%2F{str(elsewhere / 'theirs').replace('/', '%2F')}",
                      "..%2Felsewhere%2Ftheirs", "org/..%2F..%2Felsewhere%2Ftheirs", "../elsewhere/theirs"):
            error = assert_openai_error(*send("GET", f"{server.url}/v1/models/{probe}"), 404)
            assert error["code"] == "model_not_found", probe
    finally:
        server.stop()


def test_queued_jobs_stay_queued_across_a_restart(tmp_path):
    server = Server(tmp_path / "data", serve_tiny_size="micro").start()
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        data = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", crafter_examples(MIN_EXAMPLES, seed=4))
                                   .open("rb"), purpose="fine-tune")
        running = client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=data.id,
                                                 hyperparameters={"n_epochs": 50, "batch_size": 1})
        wait_for(lambda: client.fine_tuning.jobs.retrieve(running.id).status == "running")
        waiting = [client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=data.id,
                                                  hyperparameters={"n_epochs": 1}) for _ in range(2)]
        wait_for(lambda: all(client.fine_tuning.jobs.retrieve(j.id).status == "queued" for j in waiting))
        server.restart()
        client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        stopped = client.fine_tuning.jobs.retrieve(running.id)
        assert stopped.status == "failed" and stopped.error.code == "server_stopped"
        for job in waiting:
            finished = wait_for_job(client, job.id)
            assert finished.status == "succeeded" and finished.fine_tuned_model, finished.error
    finally:
        server.stop()


def test_a_job_with_nothing_to_train_fails_and_publishes_no_model(tmp_path):
    server = Server(tmp_path / "data", serve_tiny_size="micro", serve_max_seq_len=64).start()  # replies cut off
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        data = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", crafter_examples(MIN_EXAMPLES, seed=5))
                                   .open("rb"), purpose="fine-tune")
        job = wait_for_job(client, client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=data.id).id)
        assert job.status == "failed" and job.error.code == "no_trained_tokens", job
        assert "SERVE_MAX_SEQ_LEN" in job.error.message and job.fine_tuned_model is None
        assert not any(model.id.startswith("ft:") for model in client.models.list().data)  # nothing published
    finally:
        server.stop()


def test_a_non_finite_loss_or_weight_is_divergence():
    import torch

    from synth_qwen.train_worker import divergence, nonfinite_weights

    assert divergence({"loss": 2.5, "grad_norm": 1.0}) is None and divergence({"loss": 0.0}) is None
    assert divergence({"loss": math.nan}) == "the training loss became nan"
    assert divergence({"loss": 1.0, "grad_norm": math.inf}) == "the training grad norm became inf"
    layer = torch.nn.Linear(2, 2)
    assert nonfinite_weights(layer) == []
    with torch.no_grad():
        layer.bias[0] = math.nan
    assert nonfinite_weights(layer) == ["bias"]
    layer.bias.requires_grad_(False)  # frozen weights (a LoRA base) are not ours to judge
    assert nonfinite_weights(layer) == []
