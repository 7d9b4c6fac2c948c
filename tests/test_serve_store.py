"""serve's store on real files: what `python -m synth_qwen.serve` keeps in SERVE_DATA_DIR."""
from __future__ import annotations

import errno
import json
import os

import pytest

from synth_qwen.serve_store import (BadId, FineTuningJob, Hyperparameters, ModelRecord, ModelSpec, Store,
                                    page)

# job.json and models.json as serve wrote them before jobs were typed records (e0bd1f1): a data dir
# from then must load, and saving its records again must not change a byte.
EARLIER_JOB = {
    "id": "ftjob-b153efdf4949df5f56f3120d", "object": "fine_tuning.job", "created_at": 1795992625,
    "finished_at": 1795992641, "model": "local/tiny-qwen3",
    "fine_tuned_model": "ft:local/tiny-qwen3:crafter:ftjob-b153efdf4949df5f56f3120d", "organization_id": "org-local",
    "status": "succeeded", "error": None,
    "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0}, "seed": 7,
    "result_files": ["file-a200fecdf91be9a32cc4029a"], "trained_tokens": 11474,
    "training_file": "file-d91b76bcf87f6997156621f0", "validation_file": None, "estimated_finish": None,
    "integrations": [], "metadata": None, "suffix": "crafter", "output_dir": "/data/jobs/ftjob-b153/output",
    "method": {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0}}}}
TINY_BASE = {"key": "local/tiny-qwen3", "kind": "tiny", "size": "micro", "data_dir": "/data"}
EARLIER_MODELS = {
    "ft:local/tiny-qwen3:crafter:ftjob-b153": {"created": 1795992641, "job_id": "ftjob-b153", "spec": {
        "key": "ft:local/tiny-qwen3:crafter:ftjob-b153", "kind": "ft", "path": "/data/jobs/ftjob-b153/output",
        "adapter": False, "base": TINY_BASE}},
    # a fine-tune of that fine-tune: its base says which weights training started from
    "ft:local/tiny-qwen3:again:ftjob-936a": {"created": 1795992661, "job_id": "ftjob-936a", "spec": {
        "key": "ft:local/tiny-qwen3:again:ftjob-936a", "kind": "ft", "path": "/data/jobs/ftjob-936a/output",
        "adapter": False, "base": {**TINY_BASE, "init_path": "/data/jobs/ftjob-b153/output", "init_adapter": False}}},
    "ft:Qwen/Qwen3-4B-Instruct-2507:ftjob-77aa": {"created": 1795992700, "job_id": "ftjob-77aa", "spec": {
        "key": "ft:Qwen/Qwen3-4B-Instruct-2507:ftjob-77aa", "kind": "ft", "path": "/data/jobs/ftjob-77aa/output",
        "adapter": True, "base": {"key": "Qwen/Qwen3-4B-Instruct-2507", "kind": "hf",
                                  "path": "Qwen/Qwen3-4B-Instruct-2507", "allow_download": True}}},
}


def new_job(job_id: str = "ftjob-abc123", created_at: int = 100, status: str = "validating_files") -> FineTuningJob:
    return FineTuningJob(id=job_id, created_at=created_at, model="local/tiny-qwen3", status=status,
                         hyperparameters=Hyperparameters(n_epochs=2), seed=7, training_file="file-abc")


def test_files_are_added_read_listed_and_deleted(tmp_path):
    store = Store(tmp_path)
    upload = store.upload_temp_path()  # serve streams an upload here first
    upload.write_text('{"messages": []}\n')
    meta = store.add_file("train.jsonl", "fine-tune", upload)
    assert not upload.exists()  # adopted, not copied
    assert meta["id"].startswith("file-") and meta["bytes"] == 17 and meta["filename"] == "train.jsonl"
    assert store.get_file(meta["id"]) == meta
    assert store.file_data_path(meta["id"]).read_text() == '{"messages": []}\n'

    results = store.upload_temp_path()
    results.write_text("step,train_loss\n")
    csv_meta = store.add_file("step_metrics.csv", "fine-tune-results", results)
    assert {m["id"] for m in store.list_files()} == {meta["id"], csv_meta["id"]}
    assert store.list_files("fine-tune") == [meta]

    assert store.delete_file(meta["id"]) is True
    assert store.get_file(meta["id"]) is None and not store.file_data_path(meta["id"]).exists()
    assert store.delete_file(meta["id"]) is False


def test_a_job_round_trips_through_job_json(tmp_path):
    store = Store(tmp_path)
    job = store.save_job(new_job())
    saved = json.loads((tmp_path / "jobs" / job.id / "job.json").read_text())
    assert list(saved) == list(EARLIER_JOB)  # OpenAI's job fields (+ suffix, output_dir), in the same order
    assert saved["hyperparameters"] == {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert saved["method"] == {"type": "supervised", "supervised": {"hyperparameters": saved["hyperparameters"]}}
    assert store.get_job(job.id) == job

    job.status = "queued"
    job.hyperparameters = Hyperparameters(n_epochs=2, batch_size=4, learning_rate_multiplier=1.0)
    store.save_job(job)
    again = store.get_job(job.id)
    assert again == job and again.status == "queued"
    assert again.method["supervised"]["hyperparameters"]["batch_size"] == 4  # method follows hyperparameters


def test_a_data_dir_from_before_the_typed_records_loads_and_saves_unchanged(tmp_path):
    store = Store(tmp_path)
    job_json = tmp_path / "jobs" / EARLIER_JOB["id"] / "job.json"
    job_json.parent.mkdir()
    job_json.write_text(json.dumps(EARLIER_JOB, indent=1))
    store.models_path.write_text(json.dumps(EARLIER_MODELS, indent=1))
    before = job_json.read_text(), store.models_path.read_text()

    job = store.get_job(EARLIER_JOB["id"])
    assert job.status == "succeeded" and job.hyperparameters.batch_size == 4 and job.suffix == "crafter"
    models = store.models()
    assert models["ft:local/tiny-qwen3:again:ftjob-936a"].spec.base.init_path == "/data/jobs/ftjob-b153/output"
    assert models["ft:Qwen/Qwen3-4B-Instruct-2507:ftjob-77aa"].spec.base.allow_download is True

    store.save_job(job)
    store.add_model("ft:local/tiny-qwen3:crafter:ftjob-b153", models["ft:local/tiny-qwen3:crafter:ftjob-b153"])
    assert (job_json.read_text(), store.models_path.read_text()) == before


def test_a_new_model_is_saved_in_the_earlier_shape(tmp_path):
    store = Store(tmp_path)
    base = ModelSpec.model_validate(TINY_BASE)
    spec = ModelSpec(key="ft:local/tiny-qwen3:ftjob-abc123", kind="ft", path="/out", adapter=False, base=base)
    store.add_model(spec.key, ModelRecord(created=5, job_id="ftjob-abc123", spec=spec))
    assert json.loads(store.models_path.read_text()) == {spec.key: {"created": 5, "job_id": "ftjob-abc123", "spec": {
        "key": spec.key, "kind": "ft", "path": "/out", "adapter": False, "base": TINY_BASE}}}  # no null fields
    assert store.models()[spec.key].spec == spec


def test_jobs_list_newest_first_and_a_restart_fails_only_the_running_job(tmp_path):
    store = Store(tmp_path)
    statuses = ["validating_files", "queued", "running", "succeeded", "cancelled", "queued"]
    for created_at, status in enumerate(statuses):
        store.save_job(new_job(f"ftjob-{created_at}", created_at=created_at, status=status))
    assert [job.id for job in store.list_jobs()] == [f"ftjob-{i}" for i in range(5, -1, -1)]

    assert store.fail_interrupted_jobs() == ["ftjob-2"]
    jobs = {job.id: job for job in store.list_jobs()}
    failed = jobs["ftjob-2"]
    assert failed.status == "failed" and failed.finished_at and failed.error.code == "server_restarted"
    assert "while this job was running" in failed.error.message
    assert store.list_events("ftjob-2")[0]["level"] == "error"
    assert [jobs[f"ftjob-{i}"].status for i in (0, 1, 3, 4, 5)] == [
        "validating_files", "queued", "succeeded", "cancelled", "queued"]  # waiting jobs keep waiting
    assert [job.id for job in store.waiting_jobs()] == ["ftjob-0", "ftjob-1", "ftjob-5"]  # in submission order
    assert store.fail_interrupted_jobs() == []  # nothing is left running


def test_an_unreadable_models_json_is_reported_skipped_and_kept_aside(tmp_path, capsys):
    store = Store(tmp_path)
    store.models_path.write_text('{"ft:x": {"created": ')  # cut short by hand
    assert store.models() == {} and "warning: skipped" in capsys.readouterr().err
    spec = ModelSpec.model_validate(TINY_BASE)
    store.add_model("ft:y", ModelRecord(created=1, job_id="ftjob-1", spec=spec))
    assert list(store.models()) == ["ft:y"]
    [aside] = tmp_path.glob("models.json.unreadable-*")
    assert aside.read_text() == '{"ft:x": {"created": '  # never overwritten


def test_a_cut_file_record_and_a_torn_event_line_are_skipped(tmp_path, capsys):
    store = Store(tmp_path)
    job = store.save_job(new_job())
    store.add_event(job.id, "created")
    with open(store.job_dir(job.id) / "events.jsonl", "a") as handle:
        handle.write('{"id": "ftevent-x", "mess')  # a crash in the middle of an append
    assert [event["message"] for event in store.list_events(job.id)] == ["created"]
    (tmp_path / "files" / "file-cut1.json").write_text('{"id": "file-cut1", ')
    assert store.get_file("file-cut1") is None and store.list_files() == []
    assert "warning: skipped" in capsys.readouterr().err


def test_a_missing_job_is_none(tmp_path):
    assert Store(tmp_path).get_job("ftjob-nothere") is None


@pytest.mark.parametrize("broken", ['{"id": "ftjob-abc123", "status": ', '{"id": "ftjob-abc123"}', b"\xff\xfe"])
def test_an_unreadable_job_json_is_reported_and_skipped(tmp_path, capsys, broken):
    store = Store(tmp_path)
    good, bad = store.save_job(new_job("ftjob-good")), store.save_job(new_job("ftjob-bad"))
    path = tmp_path / "jobs" / bad.id / "job.json"
    path.write_bytes(broken if isinstance(broken, bytes) else broken.encode())  # truncated, incomplete, not UTF-8
    assert store.get_job(bad.id) is None and [job.id for job in store.list_jobs()] == [good.id]
    assert [job.id for job in store.waiting_jobs()] == [good.id]  # what serve does at start: the others still work
    assert f"warning: skipped {path}: unreadable" in capsys.readouterr().err


def test_events_and_checkpoints_list_newest_first(tmp_path):
    store = Store(tmp_path)
    job = store.save_job(new_job())
    for message in ("created", "validated", "started"):
        store.add_event(job.id, message)
    assert [event["message"] for event in store.list_events(job.id)] == ["started", "validated", "created"]
    for step in (3, 6):
        store.add_checkpoint(job.id, {"id": f"ftckpt-{step}", "step_number": step})
    assert [checkpoint["step_number"] for checkpoint in store.list_checkpoints(job.id)] == [6, 3]
    assert store.list_checkpoints("ftjob-other") == []


def test_ids_that_could_leave_the_data_dir_are_refused(tmp_path):
    store = Store(tmp_path)
    for bad in ("../models", "file-a/../../x", "file-", "", "ftjob-abc"):
        with pytest.raises(BadId):
            store.get_file(bad)
    with pytest.raises(BadId):
        store.get_job("../files")


def test_pages_follow_the_after_cursor():
    items = [{"id": name} for name in ("c", "b", "a")]
    assert page(items, None, 2) == {"object": "list", "data": items[:2], "has_more": True,
                                    "first_id": "c", "last_id": "b"}
    assert page(items, "b", 2)["data"] == [{"id": "a"}] and not page(items, "b", 2)["has_more"]
    assert page(items, "unknown", 2)["data"] == []
    assert page(items, None, 3)["has_more"] is False  # exactly one full page


def test_saving_leaves_no_temp_file_behind(tmp_path):
    store = Store(tmp_path)
    job = store.save_job(new_job())
    store.save_job(job)
    store.add_model("m", ModelRecord(created=1, job_id=job.id, spec=ModelSpec.model_validate(TINY_BASE)))
    assert sorted(path.name for path in (tmp_path / "jobs" / job.id).iterdir()) == ["job.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["files", "jobs", "models.json"]


def test_a_failed_save_keeps_the_old_job_json(tmp_path, monkeypatch):
    store = Store(tmp_path)
    job = store.save_job(new_job())
    job_json = tmp_path / "jobs" / job.id / "job.json"
    before = job_json.read_text()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the new text is written, then flushing it to disk fails
    job.status = "running"
    with pytest.raises(OSError, match="No space left"):
        store.save_job(job)
    assert job_json.read_text() == before
    assert [path.name for path in job_json.parent.iterdir()] == ["job.json"]


def test_a_dpo_job_keeps_its_method_and_beta_in_job_json(tmp_path):
    """method_type and beta live inside `method` (OpenAI's shape): no field of their own in job.json."""
    store = Store(tmp_path)
    job = store.save_job(new_job().model_copy(update={"method_type": "dpo", "beta": "auto"}))
    saved = json.loads((tmp_path / "jobs" / job.id / "job.json").read_text())
    assert list(saved) == list(EARLIER_JOB)
    assert saved["method"] == {"type": "dpo", "dpo": {"hyperparameters": {**saved["hyperparameters"], "beta": "auto"}}}
    job.beta = 0.1
    store.save_job(job)
    again = store.get_job(job.id)
    assert again == job and (again.method_type, again.beta) == ("dpo", 0.1)
