"""Persistent state of `serve`: files, jobs, events, checkpoints and models as JSON in SERVE_DATA_DIR.

Layout (one writer: the API process; every whole-file write goes through atomic_file, so a crash
never leaves half a JSON file):
    files/<file-id>.json  files/<file-id>.data
    jobs/<ftjob-id>/job.json  events.jsonl  checkpoints.json  (+ the worker's spec.json, output/)
    models.json           fine-tuned models and checkpoints: id -> {created, job_id, spec}
Ids are checked against a strict pattern before they touch a path, so no id escapes the dir.
Jobs and models are typed records (below); their JSON is the same, field for field and in order,
as OpenAI's job objects and as the files earlier versions wrote.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, computed_field, model_validator

from synth_qwen.atomic_file import write_text_atomic
from synth_qwen.fine_tuning_api import ACTIVE_STATUSES

ID_PATTERNS = {
    "file": re.compile(r"^file-[A-Za-z0-9]{1,64}$"),
    "ftjob": re.compile(r"^ftjob-[A-Za-z0-9]{1,64}$"),
}


class BadId(ValueError):
    """An id that does not look like one of ours (may be an attempt to escape the data dir)."""


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def check_id(kind: str, value: str) -> str:
    if not ID_PATTERNS[kind].match(value or ""):
        raise BadId(f"invalid {kind} id {value!r}: ids look like {kind}-abc123")
    return value


def now() -> int:
    return int(time.time())


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


# ---------------------------------------------------------------------------------------
# Records

class ModelSpec(BaseModel):
    """How a worker loads a model. Saved without its default fields (`model_dump(exclude_defaults=True)`),
    so models.json keeps the shape it always had: tiny {key, kind, size, data_dir}, hf {key, kind, path},
    ft {key, kind, path, adapter, base}; the built-in local/qwen3-shaped is hf {key, kind, data_dir}."""
    key: str  # the name requests use; the inference worker caches loaded models by it
    kind: Literal["tiny", "hf", "ft"]  # the built-in tiny model, a Hugging Face model, a job's output
    path: str | None = None  # hf: a local dir or hub id; ft: the weights (or adapter) a job wrote
    size: str | None = None  # tiny: SERVE_TINY_SIZE
    data_dir: str | None = None  # tiny and local/qwen3-shaped: where their weights are built
    allow_download: bool = False  # hf: SERVE_ALLOW_DOWNLOAD and not cached yet
    adapter: bool | None = None  # ft: path holds a LoRA adapter for `base`, else full weights
    base: ModelSpec | None = None  # ft: the root base model it was trained from
    init_path: str | None = None  # a training base: start from these fine-tuned weights ...
    init_adapter: bool | None = None  # ... which are an adapter (trained on) or full weights


class ModelRecord(BaseModel):
    """A fine-tuned model or checkpoint in models.json."""
    created: int
    job_id: str
    spec: ModelSpec


class Hyperparameters(BaseModel):
    """As requested ("auto" or a number); resolved to numbers once the training file is validated."""
    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"


class JobError(BaseModel):
    code: str
    param: str | None = None
    message: str


class FineTuningJob(BaseModel):
    """jobs/<id>/job.json and the HTTP job object (OpenAI's fields, plus suffix and output_dir)."""
    id: str
    object: str = "fine_tuning.job"
    created_at: int
    finished_at: int | None = None
    model: str
    fine_tuned_model: str | None = None
    organization_id: str = "org-local"
    status: str  # one of fine_tuning_api.ACTIVE_STATUSES + TERMINAL_STATUSES
    error: JobError | None = None
    hyperparameters: Hyperparameters
    seed: int
    result_files: list[str] = []
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list = []
    metadata: dict | None = None
    suffix: str | None = None
    output_dir: str | None = None
    # Kept inside `method` in job.json and the job object (OpenAI's shape), not as fields of their own:
    method_type: Literal["supervised", "dpo"] = Field("supervised", exclude=True)
    beta: float | Literal["auto"] | None = Field(None, exclude=True)  # dpo: as requested, then resolved

    @model_validator(mode="before")
    @classmethod
    def _from_method(cls, data):
        method = data.get("method") if isinstance(data, dict) else None
        if isinstance(method, dict) and method.get("type") == "dpo":
            hyperparameters = (method.get("dpo") or {}).get("hyperparameters") or {}
            data = {**data, "method_type": "dpo", "beta": hyperparameters.get("beta", "auto")}
        return data

    @computed_field
    @property
    def method(self) -> dict:
        """OpenAI's newer form of `hyperparameters`; derived, so the two never disagree."""
        hyperparameters = self.hyperparameters.model_dump()
        if self.method_type == "dpo":
            hyperparameters["beta"] = self.beta
        return {"type": self.method_type, self.method_type: {"hyperparameters": hyperparameters}}


class Store:
    def __init__(self, data_dir: str | Path):
        self.root = Path(data_dir).resolve()
        self.files_dir = self.root / "files"
        self.jobs_dir = self.root / "jobs"
        for folder in (self.files_dir, self.jobs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.models_path = self.root / "models.json"

    # ---- files --------------------------------------------------------------------------
    def file_data_path(self, file_id: str) -> Path:
        return self.files_dir / f"{check_id('file', file_id)}.data"

    def add_file(self, filename: str, purpose: str, data_path: Path) -> dict:
        """Adopt `data_path` (already written under files/) as a new file object."""
        file_id = new_id("file")
        os.replace(data_path, self.file_data_path(file_id))
        meta = {"id": file_id, "object": "file", "bytes": self.file_data_path(file_id).stat().st_size,
                "created_at": now(), "filename": filename, "purpose": purpose, "status": "processed",
                "status_details": None}
        try:
            write_json(self.files_dir / f"{file_id}.json", meta)
        except OSError:  # no record, no file: the data would take space under an id nobody knows
            self.file_data_path(file_id).unlink()
            raise
        return meta

    def upload_temp_path(self) -> Path:
        return self.files_dir / f".upload-{secrets.token_hex(8)}.part"

    def get_file(self, file_id: str) -> dict | None:
        return readable(self.files_dir / f"{check_id('file', file_id)}.json", lambda saved: saved)

    def list_files(self, purpose: str | None = None) -> list[dict]:
        files = [readable(path, lambda saved: saved) for path in self.files_dir.glob("file-*.json")]
        files = [meta for meta in files if meta and (purpose is None or meta["purpose"] == purpose)]
        return sorted(files, key=lambda meta: (meta["created_at"], meta["id"]), reverse=True)

    def delete_file(self, file_id: str) -> bool:
        meta_path = self.files_dir / f"{check_id('file', file_id)}.json"
        if not meta_path.exists():
            return False
        meta_path.unlink()
        self.file_data_path(file_id).unlink(missing_ok=True)
        return True

    # ---- jobs ---------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / check_id("ftjob", job_id)

    def save_job(self, job: FineTuningJob) -> FineTuningJob:
        folder = self.job_dir(job.id)
        folder.mkdir(exist_ok=True)
        write_json(folder / "job.json", job.model_dump(mode="json"))
        return job

    def get_job(self, job_id: str) -> FineTuningJob | None:
        return read_job(self.job_dir(job_id))

    def list_jobs(self) -> list[FineTuningJob]:
        jobs = [read_job(folder) for folder in self.jobs_dir.glob("ftjob-*")]
        jobs = [job for job in jobs if job]
        return sorted(jobs, key=lambda job: (job.created_at, job.id), reverse=True)

    def add_event(self, job_id: str, message: str, level: str = "info", type: str = "message",
                  data: dict | None = None) -> dict:
        event = {"id": new_id("ftevent"), "object": "fine_tuning.job.event", "created_at": now(),
                 "level": level, "message": message, "type": type, "data": data or {}}
        with open(self.job_dir(job_id) / "events.jsonl", "a") as handle:
            handle.write(json.dumps(event) + "\n")
        return event

    def list_events(self, job_id: str) -> list[dict]:
        """Newest first, as OpenAI returns them."""
        path = self.job_dir(job_id) / "events.jsonl"
        if not path.exists():
            return []
        events = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:  # a line torn by a crash in the middle of an append
                continue
        return events[::-1]

    def add_checkpoint(self, job_id: str, checkpoint: dict) -> None:
        path = self.job_dir(job_id) / "checkpoints.json"
        write_json(path, read_json(path, []) + [checkpoint])

    def list_checkpoints(self, job_id: str) -> list[dict]:
        return read_json(self.job_dir(job_id) / "checkpoints.json", [])[::-1]

    def fail_interrupted_jobs(self) -> list[str]:
        """Jobs a server that died left running: mark failed (never stuck; its weights are half-trained).
        Jobs still waiting (validating_files, queued) are not touched: `waiting_jobs` resumes them."""
        failed = []
        for job in self.list_jobs():
            if job.status == "running":
                message = "The server stopped while this job was running; create a new job to retry."
                job.status, job.finished_at = "failed", now()
                job.error = JobError(code="server_restarted", message=message)
                self.save_job(job)
                self.add_event(job.id, message, level="error")
                failed.append(job.id)
        return failed

    def waiting_jobs(self) -> list[FineTuningJob]:
        """Jobs not started yet (validating_files, queued), oldest first: the order they run in."""
        waiting = [job for job in self.list_jobs() if job.status in ACTIVE_STATUSES and job.status != "running"]
        return waiting[::-1]

    # ---- models -------------------------------------------------------------------------
    def models(self) -> dict[str, ModelRecord]:
        return readable(self.models_path, lambda saved: {
            model_id: ModelRecord.model_validate(record) for model_id, record in (saved or {}).items()}) or {}

    def add_model(self, model_id: str, record: ModelRecord) -> None:
        models = self.models()
        if not models and self.models_path.exists():  # unreadable: kept aside, not overwritten
            os.replace(self.models_path, self.models_path.with_name(f"models.json.unreadable-{now()}"))
        models[model_id] = record
        write_json(self.models_path, {model_id: record.model_dump(mode="json", exclude_defaults=True)
                                      for model_id, record in models.items()})


def read_job(folder: Path) -> FineTuningJob | None:
    """None when the folder has no job.json, or an unreadable one (reported and skipped)."""
    return readable(folder / "job.json", lambda saved: FineTuningJob.model_validate(saved) if saved else None)


def readable(path: Path, parse):
    """parse(the JSON at `path`, None when missing); None when the file cannot be read (serve never
    writes half a file, but a disk or a hand can): that is reported on stderr and skipped, never fatal."""
    try:
        return parse(read_json(path))
    except (OSError, UnicodeDecodeError, ValueError) as error:  # JSON and validation errors are ValueErrors
        print(f"warning: skipped {path}: unreadable ({type(error).__name__}: {str(error).splitlines()[0][:120]})",
              file=sys.stderr, flush=True)
        return None


def page(items: list[dict], after: str | None, limit: int) -> dict:
    """OpenAI cursor page: items after the one with id `after`, at most `limit`."""
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    chunk = items[:limit]
    return {"object": "list", "data": chunk, "has_more": len(items) > limit,
            "first_id": chunk[0]["id"] if chunk else None, "last_id": chunk[-1]["id"] if chunk else None}
