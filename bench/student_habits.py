"""What a model does with its turns, per run of a trace DB: the habits behind its progression.

    python bench/student_habits.py sqlite:///runs/quickstart/traces.db [RUN_ID_PREFIX]

Per run id and model: turns played, invalid turns %, repeated turns % (the same actions as the
turn before, awake: the greedy loop), and ready taken % (of the turns whose observation listed a `New
achievement ready:` action, those whose first executed action was one of them: the teacher's
cheap wins, a copy away).
"""
import sys
from collections import defaultdict

import sqlalchemy as sa

from synth_qwen import tracing
from synth_qwen.observation import ready_in

T = tracing


def habits(engine: sa.Engine, prefix: str) -> dict[tuple[str, str], dict]:
    actions = defaultdict(list)  # (session, turn) -> executed actions in order
    observations = {}
    runs = {}
    with engine.connect() as conn:
        for sid, run_id, model in conn.execute(sa.select(T.session_traces.c.session_id, T.session_traces.c.run_id,
                                                         T.session_traces.c.model)
                                               .where(T.session_traces.c.run_id.startswith(prefix))):
            runs[sid] = (run_id, model)
        steps = sa.select(T.session_timesteps.c.session_id, T.session_timesteps.c.turn, T.session_timesteps.c.action)
        for sid, turn, action in conn.execute(steps.order_by(T.session_timesteps.c.id)):
            if sid in runs:
                actions[sid, turn].append(action)
        users = sa.select(T.messages.c.session_id, T.messages.c.turn, T.messages.c.content).where(T.messages.c.position == 0)
        for sid, turn, content in conn.execute(users):
            if sid in runs:
                observations[sid, turn] = content or ""
        invalid = dict(conn.execute(sa.select(T.session_traces.c.session_id, T.session_traces.c.invalid_turns)).all())
    table = defaultdict(lambda: dict(turns=0, invalid=0, repeated=0, ready=0, took=0))
    for sid, key in runs.items():
        row = table[key]
        row["invalid"] += invalid.get(sid) or 0
        previous = None
        for turn in sorted(t for s, t in actions if s == sid):
            done, observation = actions[sid, turn], observations.get((sid, turn), "")
            row["turns"] += 1
            asleep = "You are asleep." in observation  # actions are ignored: not a loop
            row["repeated"] += not asleep and done == previous
            previous = None if asleep else done
            ready = ready_in(observation)
            row["ready"] += bool(ready)
            row["took"] += bool(ready) and done[0] in ready
    return table


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    table = habits(tracing.open_readonly(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
    print(f"{'run':<40} {'model':<36} {'turns':>6} {'invalid %':>9} {'repeated %':>10} {'ready taken %':>13}")
    for (run_id, model), row in sorted(table.items()):
        pct = lambda part, whole: f"{100 * part / whole:.1f}" if whole else "-"
        print(f"{run_id:<40} {model[:36]:<36} {row['turns']:>6} {pct(row['invalid'], row['turns']):>9} "
              f"{pct(row['repeated'], row['turns']):>10} {pct(row['took'], row['ready']):>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
