"""`python -m synth_qwen.serve`: a local OpenAI-compatible learning service.

Files, fine-tuning jobs (TRL/PEFT in a worker subprocess, one at a time) and chat completions
(with Qwen tool-call parsing, in an inference worker subprocess), the same routes under /v1, /api
and /api/v1. State lives as JSON in SERVE_DATA_DIR and survives restarts. This process never
imports torch: it validates, stores, queues and forwards.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from synth_qwen import access, preflight, sft_format, train_dpo, train_worker, write_errors
from synth_qwen.inference_worker import WORKER_ANSWER, ChatAnswer, ChatFailure, ChatRequest, ReleaseModels
from synth_qwen.fine_tuning_api import (ACTIVE_STATUSES, HYPERPARAMETER_RANGES, METHOD_HYPERPARAMETERS, METHODS,
                                         hyperparameter_problem, seed_problem)
from synth_qwen.serve_store import (BadId, FineTuningJob, Hyperparameters, JobError, ModelRecord, ModelSpec, Store,
                                    new_id, now, page)
from synth_qwen.settings import ServeSettings, SettingsError, exit_usage, load
from synth_qwen.tiny_model import QWEN3_SHAPED_MODELS, TINY_MODEL_ID
from synth_qwen.train_worker import (WORKER_MESSAGE, TrainingSpec, WorkerCheckpoint, WorkerError, WorkerEvent,
                                     WorkerMetrics, WorkerResult)

PREFIXES = ("/v1", "/api", "/api/v1")
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # workers import synth_qwen from here
CANCEL_GRACE_S = (10, 5)  # seconds to wait after the cancel flag, then after SIGTERM, before SIGKILL
PAGE_LIMITS = {"files": (10_000, 10_000), "other": (20, 100)}  # (default, most) per OpenAI list endpoint
JSON_SLACK_BYTES = 1 << 20  # non-upload bodies may exceed the upload limit by this much
class ApiError(Exception):
    """Becomes an OpenAI-style `{"error": {...}}` response."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class TrainingRun:
    """The job the training worker runs now (one at a time)."""
    job_id: str
    process: asyncio.subprocess.Process


@dataclass
class ServeState:
    """What changes while serving (aiohttp freezes the app's own keys once it starts)."""
    training: TrainingRun | None = None


def not_found(what: str, value: str) -> ApiError:
    return ApiError(404, f"No {what} with id {value!r}.", code=f"{what.replace(' ', '_')}_not_found")


@web.middleware
async def errors_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as error:
        return web.json_response(error.body, status=error.status)
    except BadId as error:
        return web.json_response(ApiError(400, str(error), code="invalid_id").body, status=400)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app["settings"].serve_max_upload_mb
        return web.json_response(ApiError(413, f"Request body too large: the limit is {limit:g} MB "
                                               "(raise SERVE_MAX_UPLOAD_MB).", code="payload_too_large").body,
                                 status=413)
    except web.HTTPException as error:  # unknown route, wrong method
        if error.status < 400:
            raise
        return web.json_response(ApiError(error.status, f"{request.method} {request.path}: {error.reason}",
                                          code=error.reason.lower().replace(" ", "_")).body, status=error.status)
    except Exception as error:  # a bug: the client still gets OpenAI's error shape; the traceback goes to the log
        if write_errors.no_space(error):  # not a bug: the client may retry once there is room
            message = f"{no_room(request.app['store'], error)}; free space there, then retry."
            logging.getLogger("synth_qwen.serve").warning("%s %s: %s", request.method, request.path, message)
            return web.json_response(ApiError(507, message, type="server_error", code="insufficient_storage").body,
                                     status=507)
        logging.getLogger("synth_qwen.serve").exception("%s %s failed", request.method, request.path)
        return web.json_response(ApiError(500, f"Internal server error ({type(error).__name__}); see the server log.",
                                          type="server_error", code="internal_error").body, status=500)


def no_room(store: Store, error: OSError) -> str:
    return f"Not enough disk space in the data dir SERVE_DATA_DIR={store.root} ({write_errors.write_failure(error)})"


@web.middleware
async def auth_middleware(request: web.Request, handler):
    key = request.app["settings"].serve_api_key
    if key and not request.path.endswith("/health"):
        if not access.has_key(request, key):
            raise ApiError(401, "Invalid or missing API key: send 'Authorization: Bearer <SERVE_API_KEY>'.",
                           code="invalid_api_key")
    return await handler(request)


async def json_body(request: web.Request, allow_empty: bool = False) -> dict:
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise ApiError(400, "Request body must be a JSON object.", code="invalid_json")
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise ApiError(400, f"Request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.", code="invalid_json")
    return body


def page_args(request: web.Request, listing: str = "other") -> tuple[str | None, int]:
    default, most = PAGE_LIMITS[listing]
    try:
        limit = int(request.query.get("limit", default))
    except ValueError:
        raise ApiError(400, "limit must be an integer", param="limit") from None
    if not 1 <= limit <= most:
        raise ApiError(400, f"limit must be between 1 and {most}", param="limit")
    return request.query.get("after"), limit


# ---------------------------------------------------------------------------------------
# Models: the built-in two, local Hugging Face models, and what jobs produced

BUILT_IN_MODELS = (TINY_MODEL_ID, *QWEN3_SHAPED_MODELS)  # built under SERVE_DATA_DIR on first use


def model_spec(app: web.Application, name: str) -> ModelSpec | None:
    """How the workers load `name`, or None when it is unknown here (never downloads unless allowed)."""
    settings, store = app["settings"], app["store"]
    if name == TINY_MODEL_ID:
        return ModelSpec(key=name, kind="tiny", size=settings.serve_tiny_size, data_dir=str(store.root))
    if name in QWEN3_SHAPED_MODELS:  # Hugging Face models like any other, once built (tiny_model.local_path)
        return ModelSpec(key=name, kind="hf", data_dir=str(store.root))
    record = store.models().get(name)
    if record:
        return record.spec
    local = local_model_dir(settings.serve_models_dir, name)
    if local:
        return ModelSpec(key=name, kind="hf", path=str(local))
    if name.count("/") == 1 and hf_cached(name):
        return ModelSpec(key=name, kind="hf", path=name)
    if settings.serve_allow_download and name.count("/") == 1:
        return ModelSpec(key=name, kind="hf", path=name, allow_download=True)
    return None


def local_model_dir(root: Path | None, name: str) -> Path | None:
    """SERVE_MODELS_DIR/<name> when it holds a model (a config.json). Nothing outside that folder is
    ever looked at, so a request cannot probe which directories exist on the machine."""
    if root is None or not name or Path(name).is_absolute():
        return None
    root = root.resolve()
    folder = (root / name).resolve()
    if not folder.is_relative_to(root) or not (folder / "config.json").is_file():
        return None
    return folder


def training_base(spec: ModelSpec) -> ModelSpec:
    """What a job trains from: a base model as it is, or a fine-tuned model's weights on top of its
    own base (whose kind picks the method: the tiny model full, others LoRA). The new model is named
    after, and served on, the root base, as OpenAI names a fine-tune of a fine-tune."""
    if spec.kind != "ft":
        return spec
    return spec.base.model_copy(update={"init_path": spec.path, "init_adapter": spec.adapter})


def hf_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # a malformed repo id is simply not cached
        return False


def model_object(model_id: str, created: int = 0, owned_by: str = "system") -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


async def list_models(request: web.Request) -> web.Response:
    models = [model_object(model_id) for model_id in BUILT_IN_MODELS]
    models += [model_object(model_id, record.created, "user") for model_id, record in
               request.app["store"].models().items()]
    return web.json_response({"object": "list", "data": models})


async def retrieve_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    spec = model_spec(request.app, name)
    if spec is None:
        raise ApiError(404, f"The model {name!r} does not exist here.", param="model", code="model_not_found")
    record = request.app["store"].models().get(name)
    return web.json_response(model_object(name, record.created, "user") if record else model_object(name))


# ---------------------------------------------------------------------------------------
# Files

async def create_file(request: web.Request) -> web.Response:
    store, limit = request.app["store"], int(request.app["settings"].serve_max_upload_mb * (1 << 20))
    if request.content_length and request.content_length > limit + JSON_SLACK_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "Upload files as multipart/form-data with fields 'file' and 'purpose'.")
    purpose, filename, temp = None, None, store.upload_temp_path()
    try:
        try:
            purpose, filename = await read_upload(request, temp, limit)
        except (ValueError, AssertionError, LookupError, HttpProcessingError, aiohttp.ClientPayloadError) as error:
            # aiohttp's parser says "no boundary", "invalid boundary", a bad part header or a cut-off body
            # with these; a non-UTF-8 purpose is a UnicodeDecodeError (a ValueError)
            raise ApiError(400, f"Malformed multipart/form-data body: {error or type(error).__name__}. "
                                "Send fields 'file' and 'purpose' (UTF-8).", code="invalid_multipart") from None
        if filename is None:
            raise ApiError(400, "Missing multipart field 'file'.", param="file")
        if not purpose:
            raise ApiError(400, "Missing multipart field 'purpose' (use purpose=fine-tune).", param="purpose")
        return web.json_response(store.add_file(filename, purpose, temp))
    finally:
        temp.unlink(missing_ok=True)


async def read_upload(request: web.Request, temp: Path, limit: int) -> tuple[str | None, str | None]:
    """(purpose, file name) of a multipart upload; the file's bytes go to `temp`."""
    purpose, filename = None, None
    async for part in await request.multipart():
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file":
            filename = Path(part.filename or "upload.jsonl").name
            size = 0
            with open(temp, "wb") as handle:
                while chunk := await part.read_chunk(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
                    handle.write(chunk)
    return purpose, filename


def found_or_404(request: web.Request, kind: str, id_param: str, get):
    """What `get` finds for the id in the URL, or a 404 naming what was missing."""
    wanted = request.match_info[id_param]
    found = get(wanted)
    if found is None:
        raise not_found(kind, wanted)
    return found


def get_file_or_404(request: web.Request) -> dict:
    return found_or_404(request, "file", "file_id", request.app["store"].get_file)


async def list_files(request: web.Request) -> web.Response:
    after, limit = page_args(request, "files")
    files = request.app["store"].list_files(request.query.get("purpose"))
    return web.json_response(page(files, after, limit))


async def retrieve_file(request: web.Request) -> web.Response:
    return web.json_response(get_file_or_404(request))


async def file_content(request: web.Request) -> web.FileResponse:
    meta = get_file_or_404(request)
    return web.FileResponse(request.app["store"].file_data_path(meta["id"]),
                            headers={"Content-Type": "application/octet-stream"})


async def delete_file(request: web.Request) -> web.Response:
    meta = get_file_or_404(request)
    request.app["store"].delete_file(meta["id"])
    return web.json_response({"id": meta["id"], "object": "file", "deleted": True})


# ---------------------------------------------------------------------------------------
# Fine-tuning jobs

def requested_method(body: dict) -> tuple[str, Hyperparameters, float | str | None]:
    """(method.type, its hyperparameters, beta or None): `hyperparameters` (the deprecated form)
    overlaid by `method.<type>.hyperparameters`; checked."""
    method = body.get("method") or {}
    kind = method.get("type", "supervised") if isinstance(method, dict) else None
    if kind not in METHODS:
        raise ApiError(400, f"method.type {kind!r} is not supported here; supported: "
                            f"{', '.join(repr(name) for name in METHODS)}.", param="method.type")
    given = method.get(kind) if isinstance(method.get(kind), dict) else {}
    merged = {**(body.get("hyperparameters") or {}), **(given.get("hyperparameters") or {})}
    names = METHOD_HYPERPARAMETERS[kind]
    for name in merged:
        if name in HYPERPARAMETER_RANGES and name not in names:
            raise ApiError(400, f"hyperparameters.{name} is not a hyperparameter of method.type={kind!r}.",
                           param=f"hyperparameters.{name}")
    checked = {}
    for name in names:
        value = merged.get(name, "auto")
        problem = hyperparameter_problem(name, value)
        if problem:
            raise ApiError(400, f"hyperparameters.{name} {problem}; got {value!r}.", param=f"hyperparameters.{name}")
        checked[name] = value if value == "auto" else HYPERPARAMETER_RANGES[name][0](value)
    beta = checked.pop("beta", None)
    return kind, Hyperparameters(**checked), beta


def training_file_path(request: web.Request, body: dict, field: str) -> tuple[str | None, Path | None]:
    file_id = body.get(field)
    if file_id is None and field == "validation_file":
        return None, None
    if not isinstance(file_id, str):
        raise ApiError(400, f"'{field}' must be a file id from POST /files.", param=field)
    meta = request.app["store"].get_file(file_id)
    if meta is None:
        raise ApiError(404, f"No file with id {file_id!r} ({field}).", param=field, code="file_not_found")
    if meta["purpose"] != "fine-tune":
        raise ApiError(400, f"File {file_id} has purpose {meta['purpose']!r}; upload it with purpose=fine-tune.",
                       param=field)
    return file_id, request.app["store"].file_data_path(file_id)


async def create_job(request: web.Request) -> web.Response:
    app, store = request.app, request.app["store"]
    body = await json_body(request)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required (e.g. local/tiny-qwen3).", param="model")
    spec = model_spec(app, model)
    if spec is None:
        raise ApiError(404, f"The model {model!r} does not exist here (set SERVE_ALLOW_DOWNLOAD=true to fetch "
                            "Hugging Face models).", param="model", code="model_not_found")
    method_type, hyperparameters, beta = requested_method(body)
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
        raise ApiError(400, "'suffix' must be a string of at most 64 characters.", param="suffix")
    seed = body.get("seed")
    if seed is not None and seed_problem(seed):
        raise ApiError(400, f"'seed' {seed_problem(seed)}.", param="seed")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ApiError(400, "'metadata' must be a JSON object.", param="metadata")
    training_file, _ = training_file_path(request, body, "training_file")  # the body is checked first, then files
    validation_file, _ = training_file_path(request, body, "validation_file")
    job = FineTuningJob(id=new_id("ftjob"), created_at=now(), model=model, status="validating_files",
                        hyperparameters=hyperparameters, method_type=method_type, beta=beta,
                        seed=seed if seed is not None else secrets.randbelow(2**31), training_file=training_file, validation_file=validation_file, metadata=metadata, suffix=suffix)
    store.save_job(job)
    store.add_event(job.id, f"Created fine-tuning job: {job.id}")
    app["background"].add(asyncio.create_task(validate_job(app, job.id, spec)))
    return web.json_response(job.model_dump(mode="json"))


async def validate_job(app: web.Application, job_id: str, spec: ModelSpec) -> None:
    store = app["store"]
    job = store.get_job(job_id)
    store.add_event(job_id, "Validating training file: " + job.training_file)
    reports = []
    for field, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
        if file_id:
            minimum = app["settings"].serve_min_examples if field == "training_file" else 1
            reports.append((field, await asyncio.to_thread(
                sft_format.validate_jsonl, store.file_data_path(file_id), minimum, file_id, job.method_type)))
    job = store.get_job(job_id)
    if job.status != "validating_files":  # cancelled meanwhile
        return
    for field, report in reports:
        if not report.ok:
            return finish_job(store, job, "failed", error=JobError(
                code="invalid_training_file" if field == "training_file" else "invalid_validation_file",
                param=field, message=f"Invalid {field.replace('_', ' ')} {report.summary()}"))
    kind = "tiny" if training_base(spec).kind == "tiny" else "hf"
    job.hyperparameters = train_worker.resolve_hyperparameters(job.hyperparameters, kind, reports[0][1].examples)
    if job.method_type == "dpo":
        job.beta = train_dpo.resolve_beta(job.beta)
    job.status = "queued"
    store.save_job(job)
    resolved = ", ".join(f"{name}={value:g}" for name, value in job.method[job.method_type]["hyperparameters"].items())
    what = "preference pairs" if job.method_type == "dpo" else "training examples"
    store.add_event(job_id, f"Files validated ({reports[0][1].examples} {what}); job queued "
                            f"({job.method_type}: {resolved})")
    await app["job_queue"].put(job_id)


def finish_job(store: Store, job: FineTuningJob, status: str, error: JobError | None = None) -> None:
    job.status, job.finished_at, job.error = status, now(), error
    store.save_job(job)
    message = {"succeeded": "The job has successfully completed", "cancelled": "Job cancelled"}.get(
        status, f"Job failed: {error.message if error else ''}")
    store.add_event(job.id, message, level="error" if status == "failed" else "info")


def fine_tuned_name(job: FineTuningJob, root_model: str) -> str:
    return f"ft:{root_model}:{job.suffix}:{job.id}" if job.suffix else f"ft:{root_model}:{job.id}"


async def job_runner(app: web.Application) -> None:
    """One job at a time, in submission order."""
    while True:
        job_id = await app["job_queue"].get()
        job = app["store"].get_job(job_id)
        if job and job.status == "queued":
            try:
                await run_job(app, job)
            except Exception as error:  # a bug here, or a full disk, must not stop later jobs
                fail_job_after(app["store"], job_id, error)


def fail_job_after(store: Store, job_id: str, error: Exception) -> None:
    if write_errors.no_space(error):
        reason = JobError(code="insufficient_storage", message=f"{no_room(store, error)}; free space there, then "
                                                               "create a new job")
    else:
        reason = JobError(code="server_error", message=f"{type(error).__name__}: {error}")
        logging.getLogger("synth_qwen.serve").error("job %s failed", job_id, exc_info=error)
    try:
        finish_job(store, store.get_job(job_id), "failed", reason)
    except OSError as again:  # not even job.json fits: the next start marks the job failed (server_restarted)
        logging.getLogger("synth_qwen.serve").error("job %s: cannot record its failure (%s)", job_id, again)


async def run_job(app: web.Application, job: FineTuningJob) -> None:
    store, settings, state = app["store"], app["settings"], app["state"]
    job_dir = store.job_dir(job.id)
    base = training_base(model_spec(app, job.model))
    spec = TrainingSpec(
        job_id=job.id, model=job.model, base=base, training_file=str(store.file_data_path(job.training_file)),
        validation_file=str(store.file_data_path(job.validation_file)) if job.validation_file else None,
        hyperparameters=job.hyperparameters, method=job.method_type, beta=job.beta, seed=job.seed,
        device=settings.serve_device, max_seq_len=settings.serve_max_seq_len, lora_rank=settings.serve_lora_rank,
        output_dir=str(job_dir / "output"), precision=settings.serve_train_precision, compile=settings.serve_train_compile)
    (job_dir / "spec.json").write_text(spec.model_dump_json(indent=1))
    (job_dir / "cancel").unlink(missing_ok=True)
    job.status = "running"
    store.save_job(job)
    store.add_event(job.id, "Fine-tuning job started")
    await app["inference"].release_models()  # one process at a time holds a base model (4B: 8 GB)
    with open(job_dir / "worker.log", "ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "synth_qwen.train_worker", str(job_dir), stdout=asyncio.subprocess.PIPE,
            stderr=log, env=worker_env())
    state.training = TrainingRun(job.id, process)
    name = fine_tuned_name(job, base.key)
    result, failure = None, None
    async for raw in process.stdout:
        try:
            message = WORKER_MESSAGE.validate_json(raw)
        except ValueError:  # not one of ours: ignore
            continue
        if isinstance(message, WorkerEvent):
            store.add_event(job.id, message.message, level=message.level)
        elif isinstance(message, WorkerMetrics):
            data = message.data.model_dump(exclude_none=True)
            rewards = (f", reward accuracy={data['reward_accuracy']:.3f}, reward margin={data['reward_margin']:.4f}"
                       if "reward_accuracy" in data else "")
            store.add_event(job.id, f"Step {data['step']}/{message.total_steps}: training loss="
                                    f"{data['train_loss']:.4f}{rewards}", type="metrics",
                            data={**data, "total_steps": message.total_steps})
        elif isinstance(message, WorkerCheckpoint):
            add_checkpoint(store, job, name, message, base)
        elif isinstance(message, WorkerResult):
            result = message
        elif isinstance(message, WorkerError):
            failure = message
    returncode = await process.wait()
    state.training = None
    job = store.get_job(job.id)
    if job.status == "cancelled":
        return
    if returncode == 0 and result:  # the metrics file first: a job whose results cannot be stored publishes no model
        metrics_file = store.add_file("step_metrics.csv", "fine-tune-results", copy_for_store(store, result.metrics_csv))
        register_model(store, name, job.id, result.output_dir, result.adapter, base)
        job.fine_tuned_model, job.trained_tokens, job.output_dir = name, result.trained_tokens, result.output_dir
        job.result_files = [metrics_file["id"]]
        store.add_event(job.id, f"New fine-tuned model created: {name} ({result.tokens_per_second:.0f} training "
                                "tokens/s)", data={"tokens_per_second": result.tokens_per_second,
                                                   "steady_tokens_per_second": result.steady_tokens_per_second,
                                                   "train_seconds": result.train_seconds})
        return finish_job(store, job, "succeeded")
    finish_job(store, job, "failed", JobError(code=failure.code if failure else "training_failed",
                                              message=failure.message if failure else
                                              f"training worker exited with status {returncode}; see {job_dir}/worker.log"))


def copy_for_store(store: Store, path: str) -> Path:
    temp = store.upload_temp_path()
    try:
        shutil.copyfile(path, temp)
    except OSError:
        temp.unlink(missing_ok=True)
        raise
    return temp


def register_model(store: Store, name: str, job_id: str, path: str, adapter: bool, base: ModelSpec) -> None:
    spec = ModelSpec(key=name, kind="ft", path=path, adapter=adapter, base=base)
    store.add_model(name, ModelRecord(created=now(), job_id=job_id, spec=spec))


def add_checkpoint(store: Store, job: FineTuningJob, name: str, checkpoint: WorkerCheckpoint, base: ModelSpec) -> None:
    checkpoint_name = f"{name}:ckpt-step-{checkpoint.step}"
    metrics = checkpoint.metrics.model_dump(include={"step", "train_loss", "train_mean_token_accuracy", "valid_loss"},
                                            exclude_none=True) if checkpoint.metrics else {}
    store.add_checkpoint(job.id, {
        "id": new_id("ftckpt"), "object": "fine_tuning.job.checkpoint", "created_at": now(),
        "fine_tuned_model_checkpoint": checkpoint_name, "fine_tuning_job_id": job.id,
        "step_number": checkpoint.step, "metrics": metrics})
    register_model(store, checkpoint_name, job.id, checkpoint.path, base.kind != "tiny", base)
    store.add_event(job.id, f"Checkpoint created at step {checkpoint.step}: {checkpoint_name}")


def worker_env() -> dict:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": PACKAGE_ROOT + (os.pathsep + path if path else "")}


def get_job_or_404(request: web.Request) -> FineTuningJob:
    return found_or_404(request, "fine-tuning job", "job_id", request.app["store"].get_job)


async def list_jobs(request: web.Request) -> web.Response:
    jobs = [job.model_dump(mode="json") for job in request.app["store"].list_jobs()]
    return web.json_response(page(jobs, *page_args(request)))


async def retrieve_job(request: web.Request) -> web.Response:
    return web.json_response(get_job_or_404(request).model_dump(mode="json"))


async def cancel_job(request: web.Request) -> web.Response:
    await json_body(request, allow_empty=True)  # the SDK sends Content-Type json with an empty body
    app, job = request.app, get_job_or_404(request)
    if job.status not in ACTIVE_STATUSES:
        raise ApiError(400, f"Job {job.id} is already {job.status}; only active jobs can be cancelled.",
                       code="job_not_active")
    was_running = job.status == "running"
    finish_job(app["store"], job, "cancelled")
    training = app["state"].training
    if was_running and training and training.job_id == job.id:
        app["background"].add(asyncio.create_task(stop_worker(app["store"].job_dir(job.id), training.process)))
    return web.json_response(job.model_dump(mode="json"))


async def stop_worker(job_dir: Path, process) -> None:
    """Flag, then SIGTERM, then SIGKILL: the worker gets a chance to stop between steps."""
    (job_dir / "cancel").touch()
    for signal_next, grace in zip((process.terminate, process.kill), CANCEL_GRACE_S):
        try:
            await asyncio.wait_for(process.wait(), grace)
            return
        except asyncio.TimeoutError:
            signal_next()
    await process.wait()


async def list_events(request: web.Request) -> web.Response:
    job = get_job_or_404(request)
    return web.json_response(page(request.app["store"].list_events(job.id), *page_args(request)))


async def list_checkpoints(request: web.Request) -> web.Response:
    job = get_job_or_404(request)
    return web.json_response(page(request.app["store"].list_checkpoints(job.id), *page_args(request)))


# ---------------------------------------------------------------------------------------
# Chat completions (forwarded to the inference worker)

class InferenceWorker:
    """The inference subprocess: requests go down its stdin, answers come back by id."""

    def __init__(self, settings: ServeSettings):
        self.settings, self.process, self.pending, self.ids = settings, None, {}, itertools.count()
        self.lock = asyncio.Lock()

    async def ensure_started(self) -> None:
        async with self.lock:
            if self.process and self.process.returncode is None:
                return
            log = open(self.settings.serve_data_dir / "inference_worker.log", "ab")
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "synth_qwen.inference_worker", self.settings.serve_device,
                str(self.settings.serve_max_batch), str(self.settings.serve_max_loaded_models),
                str(self.settings.serve_prefix_cache_mb),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, env=worker_env(),
                limit=1 << 24)
            asyncio.get_running_loop().create_task(self.read_answers(self.process))

    async def read_answers(self, process) -> None:
        async for raw in process.stdout:
            answer = WORKER_ANSWER.validate_json(raw)
            future = self.pending.pop(answer.id, None)
            if future and not future.done():
                future.set_result(answer)
        await process.wait()
        for request_id, future in self.pending.items():  # the worker died: nobody will answer these
            if not future.done():
                future.set_result(ChatFailure(id=request_id, error=f"inference worker exited with status "
                                                                   f"{process.returncode}; see inference_worker.log "
                                                                   "in the data dir"))
        self.pending.clear()

    async def complete(self, request: ChatRequest) -> ChatAnswer | ChatFailure:
        await self.ensure_started()
        request = request.model_copy(update={"id": next(self.ids)})
        future = asyncio.get_running_loop().create_future()
        self.pending[request.id] = future
        self.process.stdin.write((request.model_dump_json() + "\n").encode())
        await self.process.stdin.drain()
        return await future

    async def release_models(self) -> None:
        """Ask the worker to free its models (a training job needs the memory); no-op when it is not running."""
        if self.process and self.process.returncode is None:
            self.process.stdin.write((ReleaseModels().model_dump_json() + "\n").encode())
            await self.process.stdin.drain()

    async def stop(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except asyncio.TimeoutError:
                self.process.kill()


def chat_messages(messages) -> list[dict]:
    """The messages as the chat template takes them, or a 400 naming the first bad one. As in OpenAI's
    API, content is a string or a list of text parts (joined by newlines here, as vLLM does), and only
    an assistant message that carries tool_calls may leave it out."""
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in sft_format.ROLES for m in messages):
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects with roles "
                            f"{', '.join(sft_format.ROLES)}.", param="messages")
    checked = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text"
                                             and isinstance(part.get("text"), str) for part in content):
            content = "\n".join(part["text"] for part in content)
        elif content is None and not (message["role"] == "assistant" and message.get("tool_calls")):
            raise ApiError(400, f"messages[{index}].content is required for a {message['role']} message.",
                           param=f"messages[{index}].content")
        elif content is not None and not isinstance(content, str):
            raise ApiError(400, f"messages[{index}].content must be a string or a list of text parts "
                                '({"type": "text", "text": "..."}).', param=f"messages[{index}].content")
        checked.append({**message, "content": content})
    return checked


def chat_request(body: dict) -> dict:
    messages = chat_messages(body.get("messages"))
    if body.get("stream"):
        raise ApiError(400, "stream=true is not supported by this server.", param="stream")
    if body.get("n", 1) != 1:
        raise ApiError(400, "Only n=1 is supported.", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    checks = {"max_tokens": (max_tokens, int, 1), "temperature": (body.get("temperature"), (int, float), 0),
              "top_p": (body.get("top_p"), (int, float), 0), "seed": (body.get("seed"), int, None)}
    for name, (value, kinds, minimum) in checks.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds) or
                                  (minimum is not None and value < minimum)):
            raise ApiError(400, f"'{name}' has an invalid value {value!r}.", param=name)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ApiError(400, "'tools' must be a list.", param="tools")
    if body.get("tool_choice") == "none":
        tools = None
    return {"messages": messages, "tools": tools, "max_tokens": max_tokens, "temperature": body.get("temperature"),
            "top_p": body.get("top_p"), "seed": body.get("seed")}


async def chat_completions(request: web.Request) -> web.Response:
    body = await json_body(request)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required.", param="model")
    forwarded = chat_request(body)
    spec = model_spec(request.app, model)
    if spec is None:
        raise ApiError(404, f"The model {model!r} does not exist here.", param="model", code="model_not_found")
    answer = await request.app["inference"].complete(ChatRequest(model=spec, **forwarded))
    if isinstance(answer, ChatFailure):
        raise ApiError(500, f"Model {model} failed: {answer.error}", type="server_error", code="model_error")
    return web.json_response({
        "id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion", "created": now(), "model": model,
        "choices": [{"index": 0, "message": answer.message, "finish_reason": answer.finish_reason,
                     "logprobs": None}],
        "usage": answer.usage.model_dump(), "system_fingerprint": None})


async def health(request: web.Request) -> web.Response:
    training = request.app["state"].training
    return web.json_response({"status": "ok", "training_job": training.job_id if training else None,
                              "queued_jobs": request.app["job_queue"].qsize()})


# ---------------------------------------------------------------------------------------
# App

ROUTES = [
    ("POST", "/files", create_file), ("GET", "/files", list_files), ("GET", "/files/{file_id}", retrieve_file),
    ("GET", "/files/{file_id}/content", file_content), ("DELETE", "/files/{file_id}", delete_file),
    ("POST", "/fine_tuning/jobs", create_job), ("GET", "/fine_tuning/jobs", list_jobs),
    ("GET", "/fine_tuning/jobs/{job_id}", retrieve_job), ("POST", "/fine_tuning/jobs/{job_id}/cancel", cancel_job),
    ("GET", "/fine_tuning/jobs/{job_id}/events", list_events),
    ("GET", "/fine_tuning/jobs/{job_id}/checkpoints", list_checkpoints),
    ("GET", "/models", list_models), ("GET", "/models/{model:.+}", retrieve_model),
    ("POST", "/chat/completions", chat_completions), ("GET", "/health", health),
]


def make_app(settings: ServeSettings) -> web.Application:
    limit = int(settings.serve_max_upload_mb * (1 << 20)) + JSON_SLACK_BYTES
    app = web.Application(client_max_size=limit, middlewares=[errors_middleware, auth_middleware])
    app["settings"], app["store"] = settings, Store(settings.serve_data_dir)
    app["interrupted"] = app["store"].fail_interrupted_jobs()
    app["inference"], app["background"], app["state"] = InferenceWorker(settings), set(), ServeState()
    for prefix in PREFIXES:
        for method, path, handler in ROUTES:
            app.router.add_route(method, prefix + path, handler)
    app.router.add_get("/health", health)
    app.on_startup.append(start_background)
    app.on_cleanup.append(stop_background)
    return app


async def start_background(app: web.Application) -> None:
    app["job_queue"] = asyncio.Queue()
    app["runner"] = asyncio.create_task(job_runner(app))
    for job in app["store"].waiting_jobs():  # jobs a restart found waiting keep their place in line
        if job.status == "queued":
            await app["job_queue"].put(job.id)
            continue
        spec = model_spec(app, job.model)
        if spec is None:
            finish_job(app["store"], job, "failed", JobError(code="model_not_found", param="model", message=(
                f"The model {job.model!r} is no longer available here after a restart.")))
        else:
            app["background"].add(asyncio.create_task(validate_job(app, job.id, spec)))


async def stop_background(app: web.Application) -> None:
    app["runner"].cancel()
    training = app["state"].training
    if training:  # the job cannot outlive us; say so now rather than at the next start
        training.process.kill()
        job = app["store"].get_job(training.job_id)
        finish_job(app["store"], job, "failed", JobError(code="server_stopped", message=(
            "The server stopped while this job was running; create a new job to retry.")))
    await app["inference"].stop()


def main() -> None:
    settings = load(ServeSettings)
    preflight.ready_or_exit(dirs={"SERVE_DATA_DIR": settings.serve_data_dir},
                            inputs={"SERVE_MODELS_DIR": settings.serve_models_dir})
    access.exposure_or_exit(access.SERVE, settings.serve_host, settings.serve_api_key, settings.serve_allow_no_auth)
    try:
        preflight.listenable(settings.serve_host, settings.serve_port)  # before the data dir is made
    except SettingsError as error:
        exit_usage(str(error))
    settings.serve_data_dir.mkdir(parents=True, exist_ok=True)
    app = make_app(settings)
    for job_id in app["interrupted"]:
        print(f"serve: job {job_id} was running when the server stopped; marked failed", flush=True)
    runner = web.AppRunner(app)

    async def serve_forever() -> None:
        await runner.setup()
        site = web.TCPSite(runner, settings.serve_host, settings.serve_port)
        try:
            await site.start()
        except OSError as error:  # taken since the preflight
            exit_usage(str(preflight.cannot_listen(settings.serve_host, settings.serve_port, error)))
        port = site._server.sockets[0].getsockname()[1]
        base = f"http://{settings.serve_host}:{port}"
        print(f"serve: listening on {base}/v1 (also {base}/api and {base}/api/v1)", flush=True)
        print(f"serve: data {settings.serve_data_dir.resolve()}, device {settings.serve_device}, "
              f"models {' + '.join(BUILT_IN_MODELS)} + {len(app['store'].models())} fine-tuned, "
              f"auth {'on' if settings.serve_api_key else 'off'}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve_with_cleanup(runner, serve_forever))
    except KeyboardInterrupt:
        pass


async def serve_with_cleanup(runner: web.AppRunner, serve_forever) -> None:
    import signal

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)  # terminate = clean shutdown, workers stopped
    try:
        await serve_forever()
    except asyncio.CancelledError:
        pass
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
