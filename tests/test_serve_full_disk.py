"""`serve` on a full disk: an upload is a 507 naming the data dir, a job that cannot write its weights
fails saying so and publishes nothing, and serving goes on.

No file of serve or its workers may grow past a limit (RLIMIT_FSIZE, `Server(file_size_limit=…)`): a
write past it fails with "File too large" exactly where a full disk fails with "No space left on
device", while the small JSON records still fit.
"""
from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from serve_helpers import Server, crafter_examples, http, wait_for_job, write_jsonl
from synth_qwen import tiny_model
from synth_qwen.sft_format import MIN_EXAMPLES
from synth_qwen.tiny_model import TINY_MODEL_ID

pytestmark = pytest.mark.timeout(300)


def test_an_upload_onto_a_full_disk_is_a_507_naming_the_data_dir_and_serving_goes_on(tmp_path):
    data_dir = tmp_path / "data"
    server = Server(data_dir, file_size_limit=256 << 10, serve_tiny_size="micro").start()
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as error:
            client.files.create(file=("big.jsonl", b"{}\n" * (200 << 10)), purpose="fine-tune")  # 600 KB
        assert error.value.status_code == 507
        assert error.value.body == {
            "message": f"Not enough disk space in the data dir SERVE_DATA_DIR={data_dir.resolve()} (File too large); "
                       "free space there, then retry.", "type": "server_error", "param": None,
            "code": "insufficient_storage"}
        assert client.files.list().data == [] and not list((data_dir / "files").iterdir())  # no half file
        small = client.files.create(file=("small.jsonl", b"{}\n" * 100), purpose="fine-tune")
        assert [f.id for f in client.files.list().data] == [small.id]
        assert http("GET", server.url + "/health")[1]["status"] == "ok"
        assert "Traceback" not in server.log()  # a full disk is no bug
    finally:
        server.stop()


def test_a_job_that_cannot_write_its_weights_fails_saying_why_and_publishes_no_model(tmp_path):
    data_dir = (tmp_path / "data").resolve()
    tiny_model.ensure(data_dir, "micro")  # the 2 MB base is built while there is room; its checkpoints will not fit
    # compile on: its C++ build fails on the full disk too, and the job must train on uncompiled to say why it failed
    server = Server(data_dir, file_size_limit=1 << 20, serve_tiny_size="micro", serve_train_compile="on").start()
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        data = client.files.create(file=write_jsonl(tmp_path / "t.jsonl", crafter_examples(MIN_EXAMPLES, seed=6))
                                   .open("rb"), purpose="fine-tune")
        job = wait_for_job(client, client.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=data.id,
                                                                  hyperparameters={"n_epochs": 1}).id)
        folder = data_dir / "jobs" / job.id / "checkpoints"
        assert job.status == "failed" and job.error.code == "output_not_written", job
        assert job.error.message.startswith("cannot write the checkpoint of step ") and (
            "(File too large): free space on the disk of SERVE_DATA_DIR, then create a new job") in job.error.message
        assert str(folder) in job.error.message and not any(folder.iterdir())  # the half-written one is gone
        assert job.fine_tuned_model is None and client.fine_tuning.jobs.checkpoints.list(job.id).data == []
        assert not any(model.id.startswith("ft:") for model in client.models.list().data)  # nothing published
        assert http("GET", server.url + "/health")[1] == {"status": "ok", "training_job": None, "queued_jobs": 0}
    finally:
        server.stop()
