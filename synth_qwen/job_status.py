"""Fine-tuning job statuses of the learning-service API (OpenAI's), shared by `serve` and its clients.

A job moves validating_files -> queued -> running -> one of the terminal statuses, and never leaves
a terminal status. Clients (sft_kickoff) poll until a terminal status; serve fails jobs that a
restart left in an active one. This module imports nothing, so a client needs no server code.
"""
ACTIVE_STATUSES = ("validating_files", "queued", "running")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
