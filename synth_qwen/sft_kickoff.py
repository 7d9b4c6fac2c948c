"""Step 3: upload the SFT JSONL, start a fine-tuning job, follow it, print the `ft:` model id.

    LEARNING_V2_BASE_URL="http://localhost:8000/api" SYNTH_API_KEY="sk_live_xxx" \\
    QWEN_BASE_MODEL="Qwen/Qwen3-4B-Instruct-2507" QWEN_TRAINING_JSONL="ft_data/qwen4b_crafter_sft.jsonl" \\
      python -m synth_qwen.sft_kickoff

SFT_METHOD=dpo sends preference pairs (filter_traces with FILTER_FORMAT=dpo) as a DPO job
(SFT_DPO_BETA). Either way the job is created with OpenAI's `method`, never the deprecated
top-level `hyperparameters`; SFT_EXTRA_JSON is deep-merged over the body last.

The file id and job id are printed the moment they exist and saved in the state file; a rerun
with the same data, model and hyperparameters follows that job instead of starting another.
Exit 0 succeeded, 1 failed/cancelled/invalid data, 2 bad settings, 124 timed out, 130 Ctrl-C.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import openai
from openai.types.fine_tuning import FineTuningJob

from synth_qwen import preflight
from synth_qwen.atomic_file import write_text_atomic
from synth_qwen.fine_tuning_api import TERMINAL_STATUSES
from synth_qwen.settings import (KickoffSettings, SettingsError, exit_usage, install_sigterm_as_interrupt,
                                 learning_api_key, learning_base_url, load, redact)
from synth_qwen.sft_format import validate_jsonl
from synth_qwen.write_errors import write_failure

EXIT_FAILED, EXIT_TIMEOUT, EXIT_INTERRUPTED = 1, 124, 130
POLL_FAILURES_BEFORE_WARNING = 3


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------
# State file: what was started, so a rerun or a resume never loses the job id

def read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class StateNotSaved(Exception):
    """The state file could not be written (a full disk); the message says what exists and how to go on."""


def write_state(path: Path, state: dict) -> None:
    try:
        write_text_atomic(path, json.dumps(state, indent=2))
    except OSError as error:
        job_id = state.get("job_id")
        then = (f"job {job_id} is on the service and goes on; free space, then follow it with: {follow_command(job_id)}"
                if job_id else "no job was started; free space, then rerun the same command")
        raise StateNotSaved(f"cannot write the state file SFT_STATE_FILE={path} "
                            f"({write_failure(error) or error.strerror}): {then}") from None


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Creating a job

def hyperparameters(s: KickoffSettings) -> dict:
    chosen = {"n_epochs": s.sft_n_epochs, "batch_size": s.sft_batch_size,
              "learning_rate_multiplier": s.sft_learning_rate_multiplier}
    return {**chosen, "beta": s.sft_dpo_beta} if s.sft_method == "dpo" else chosen


def method(s: KickoffSettings) -> dict:
    """OpenAI's `method` (the SDK marks the top-level `hyperparameters` deprecated)."""
    return {"type": s.sft_method, s.sft_method: {"hyperparameters": hyperparameters(s)}}


def deep_merge(base: dict, extra: dict) -> dict:
    """SFT_EXTRA_JSON may add nested fields, e.g. {"hyperparameters": {"training_type": "sft"}}."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def job_body(s: KickoffSettings, training_file: str, validation_file: str | None) -> dict:
    body = {"model": s.qwen_base_model, "training_file": training_file, "method": method(s)}
    for key, value in (("suffix", s.sft_suffix), ("seed", s.sft_seed), ("validation_file", validation_file)):
        if value is not None:
            body[key] = value
    return deep_merge(body, s.sft_extra_json)


def validate_locally(path: Path, label: str, method_type: str) -> int:
    report = validate_jsonl(path, method=method_type)
    if not report.ok:
        say(f"error: {label} is not valid {'preference' if method_type == 'dpo' else 'fine-tuning'} data "
            f"(SFT_METHOD={method_type}):")
        for problem in report.errors:
            say(f"  {path}: {problem}")
        raise SystemExit(EXIT_FAILED)
    say(f"{label}: {report.examples} {'preference pairs' if method_type == 'dpo' else 'examples'} "
        f"validated locally ({path})")
    return report.examples


def upload(client: openai.OpenAI, path: Path) -> str:
    with open(path, "rb") as handle:
        uploaded = client.files.create(file=(path.name, handle), purpose="fine-tune")
    say(f"uploaded {path} -> file id {uploaded.id}")
    return uploaded.id


def service_knows(client: openai.OpenAI, job_id: str) -> bool:
    """A job id from the state file is reusable only on a service that has it (the URL may differ:
    the quickstart's serve runs on a new port each time, with the same data dir)."""
    try:
        client.fine_tuning.jobs.retrieve(job_id)
        return True
    except openai.NotFoundError:
        return False


def start_job(client: openai.OpenAI, s: KickoffSettings, state_path: Path) -> str:
    """Validate, upload, create; returns the job id (saved in the state file at once)."""
    validate_locally(s.qwen_training_jsonl, "training data", s.sft_method)
    if s.sft_validation_jsonl:
        validate_locally(s.sft_validation_jsonl, "validation data", s.sft_method)
    key = {"training_sha256": file_digest(s.qwen_training_jsonl), "model": s.qwen_base_model,
           "hyperparameters": hyperparameters(s), "suffix": s.sft_suffix, "extra": s.sft_extra_json}
    if s.sft_method != "supervised":  # a state file from before SFT_METHOD keeps its key
        key["method"] = s.sft_method
    state = read_state(state_path)
    if not s.sft_force_new and state.get("key") == key and state.get("job_id") and \
            state.get("status") not in ("failed", "cancelled") and service_knows(client, state["job_id"]):
        say(f"reusing job {state['job_id']} from {state_path} (same data, model and hyperparameters; "
            f"SFT_FORCE_NEW=1 starts a new one)")
        return state["job_id"]
    state = {"key": key, "training_jsonl": str(s.qwen_training_jsonl), "started_at": time.time()}
    state["training_file"] = upload(client, s.qwen_training_jsonl)
    write_state(state_path, state)
    if s.sft_validation_jsonl:
        state["validation_file"] = upload(client, s.sft_validation_jsonl)
        write_state(state_path, state)
    body = job_body(s, state["training_file"], state.get("validation_file"))
    # client.post sends the body as given, so extra fields (Synth's upload_to_wasabi,
    # hyperparameters.training_type) reach the service untouched.
    job = client.post("/fine_tuning/jobs", body=body, cast_to=FineTuningJob)
    state.update(job_id=job.id, status=job.status)
    write_state(state_path, state)
    say(f"created fine-tuning job {job.id} (model {job.model}, method {s.sft_method}, status {job.status})")
    say(f"  state saved to {state_path}; follow it later with: {follow_command(job.id)}")
    return job.id


def follow_command(job_id: str) -> str:
    return f"SFT_JOB_ID={job_id} python -m synth_qwen.sft_kickoff"


# ---------------------------------------------------------------------------------------
# Following a job

def event_line(event) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.created_at))
    data = event.data if isinstance(getattr(event, "data", None), dict) else {}
    if getattr(event, "type", None) == "metrics" and data:
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in data.items())
        return f"  [{stamp}] metrics: {shown}"
    return f"  [{stamp}] {event.level}: {event.message}"


def new_events(client: openai.OpenAI, job_id: str, seen: set[str]) -> list:
    """Events not printed yet, oldest first (the API lists newest first)."""
    fresh = []
    for event in client.fine_tuning.jobs.list_events(job_id, limit=100).data:
        if event.id not in seen:
            seen.add(event.id)
            fresh.append(event)
    return sorted(fresh, key=lambda e: (e.created_at, e.id))


def follow(client: openai.OpenAI, s: KickoffSettings, job_id: str, state_path: Path):
    """Poll until the job ends or SFT_TIMEOUT_S passes; each event is printed once."""
    start, seen, failures, saved_status = time.monotonic(), set(), 0, None
    say(f"following job {job_id} (poll every {s.sft_poll_interval_s:g}s, timeout {s.sft_timeout_s:g}s)")
    while True:
        try:
            for event in new_events(client, job_id, seen):
                say(event_line(event))
            job = client.fine_tuning.jobs.retrieve(job_id)
            failures = 0
        except openai.NotFoundError:
            say(f"error: job {job_id} does not exist at {redact(learning_base_url())}")
            raise SystemExit(EXIT_FAILED)
        except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                openai.RateLimitError) as error:
            failures += 1  # the SDK already retried with backoff; keep following, say so
            if failures % POLL_FAILURES_BEFORE_WARNING == 0:
                say(f"  warning: {failures} polls in a row failed ({type(error).__name__}); still trying")
            job = None
        if job is not None and job.status != saved_status:  # the state file changes when the status does
            saved_status = job.status
            state = read_state(state_path)
            if state.get("job_id") in (None, job_id):
                state.update(job_id=job_id, status=job.status, fine_tuned_model=job.fine_tuned_model,
                             trained_tokens=job.trained_tokens)
                write_state(state_path, state)
        if job is not None and job.status in TERMINAL_STATUSES:
            for event in new_events(client, job_id, seen):
                say(event_line(event))
            return job, time.monotonic() - start
        if time.monotonic() - start > s.sft_timeout_s:
            say(f"timeout: job {job_id} is still running after {s.sft_timeout_s:g}s (SFT_TIMEOUT_S).\n"
                f"keep following it with: {follow_command(job_id)}")
            raise SystemExit(EXIT_TIMEOUT)
        time.sleep(s.sft_poll_interval_s)


def report_success(job, wall_s: float) -> None:
    extra = job.model_extra or {}
    say(f"\nfine-tuned model: {job.fine_tuned_model}")
    say(f"job {job.id} succeeded in {wall_s:.0f}s (following time)" +
        (f"; trained tokens: {job.trained_tokens:,}" if job.trained_tokens else ""))
    if extra.get("output_dir"):
        say(f"weights: {extra['output_dir']}")
    say("\nnext:\n"
        f"  CRAFTER_MODEL=\"{job.fine_tuned_model}\" CRAFTER_EPISODES=10 CRAFTER_MAX_STEPS=30 "
        f"CRAFTER_DIFFICULTY=easy python -m synth_qwen.run_crafter\n"
        f"  EVAL_MODELS=\"{job.model} {job.fine_tuned_model}\" EVAL_EPISODES=50 CRAFTER_DIFFICULTY=easy "
        f"CRAFTER_MAX_STEPS=30 python -m synth_qwen.eval")


def report_failure(job) -> None:
    error = job.error
    message = getattr(error, "message", None) or "no error message from the service"
    code = getattr(error, "code", None)
    say(f"error: job {job.id} {job.status}" + (f" ({code})" if code else "") + f": {message}")


def main() -> int:
    s = load(KickoffSettings)
    try:
        base_url = learning_base_url()
    except SettingsError as error:
        exit_usage(str(error))
    if not s.sft_job_id:
        for name, path in (("QWEN_TRAINING_JSONL", s.qwen_training_jsonl), ("SFT_VALIDATION_JSONL", s.sft_validation_jsonl)):
            if path is not None and not path.is_file():
                exit_usage(f"{name}={str(path)!r} is invalid: no such file (run python -m synth_qwen.filter_traces first)")
    state_path = s.state_file
    preflight.ready_or_exit(state_files={"SFT_STATE_FILE": state_path})  # before the upload, whose file id it keeps
    client = openai.OpenAI(base_url=base_url, api_key=learning_api_key(), max_retries=5, timeout=120)
    install_sigterm_as_interrupt()
    job_id = s.sft_job_id
    try:
        job_id = job_id or start_job(client, s, state_path)
        job, wall_s = follow(client, s, job_id, state_path)
    except KeyboardInterrupt:
        if job_id and s.sft_cancel_on_interrupt:
            client.fine_tuning.jobs.cancel(job_id)
            say(f"\ninterrupted: cancelled job {job_id} (SFT_CANCEL_ON_INTERRUPT=1)")
        elif job_id:
            say(f"\ninterrupted: job {job_id} keeps running on the service.\n"
                f"follow it again with: {follow_command(job_id)}")
        else:
            say("\ninterrupted before a job was created")
        return EXIT_INTERRUPTED
    except StateNotSaved as error:
        say(f"error: {error}")
        return EXIT_FAILED
    except openai.APIStatusError as error:
        say(f"error: the learning service at {base_url} answered HTTP {error.status_code}: {error.message}")
        return EXIT_FAILED
    except openai.APIConnectionError as error:
        say(f"error: cannot reach the learning service at {base_url}: {error}")
        return EXIT_FAILED
    if job.status != "succeeded":
        report_failure(job)
        return EXIT_FAILED
    report_success(job, wall_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
