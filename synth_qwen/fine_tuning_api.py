"""What the fine-tuning API (OpenAI's, as `serve` speaks it) allows, shared by `serve`, which enforces
it, and its clients (sft_kickoff), which check before uploading anything.

A job moves validating_files -> queued -> running -> one of the terminal statuses, and never leaves
a terminal status. Clients poll until a terminal status; serve fails jobs that a restart left in an
active one. This module imports nothing, so a client needs no server code.
"""
ACTIVE_STATUSES = ("validating_files", "queued", "running")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")

# Each hyperparameter is "auto" or a number in its range: (type, least, most). n_epochs and batch_size
# follow OpenAI's limits; the multiplier's upper bound is ours: beyond 100x the base rate no job trains.
# beta's range is ours too: DPO's KL weight; below 0.001 the reference stops mattering.
HYPERPARAMETER_RANGES = {
    "n_epochs": (int, 1, 50),
    "batch_size": (int, 1, 256),
    "learning_rate_multiplier": (float, 1e-6, 100.0),
    "beta": (float, 1e-3, 10.0),
}
# The fine-tuning methods served (`method.type`) and the hyperparameters each takes. OpenAI's third,
# "reinforcement", needs graders this service does not have.
METHOD_HYPERPARAMETERS = {
    "supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
    "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta"),
}
METHODS = tuple(METHOD_HYPERPARAMETERS)
SEED_RANGE = (0, 2**32 - 1)


def hyperparameter_problem(name: str, value) -> str | None:
    """Why `value` is not a valid `name`, or None."""
    if value == "auto":
        return None
    kind, least, most = HYPERPARAMETER_RANGES[name]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not least <= value <= most or (kind is int and value != int(value)):
        return f"must be 'auto' or {'an integer' if kind is int else 'a number'} from {least:g} to {most:g}"
    return None


def seed_problem(seed) -> str | None:
    least, most = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, int) or not least <= seed <= most:
        return f"must be an integer from {least} to {most}"
    return None
