"""Teacher relabelling (DAgger): the teacher's reply in each exact state the student was in.

A traced episode is re-played turn by turn. Crafter is deterministic, so before each turn the env
must show exactly what the student was sent (the turn's user message, after a feedback line when
the previous reply was invalid). The teacher answers that observation; then the env takes the
actions the student really executed, and the teacher is told them, so its dead-reckoning memory
follows the student's path rather than its own plan. A replay that stops matching the trace (a
corrupted trace, other game code) gives no reply at all: a label for a state the student never
saw would teach the wrong thing.

    replies, divergence = teacher_replies(session, events, by_turn, steps)
"""
from __future__ import annotations

from dataclasses import dataclass

from synth_qwen.crafter_env import CrafterEnv
from synth_qwen.expert import ExpertAgent
from synth_qwen.observation import observe
from synth_qwen.policy import builtin_reply
from synth_qwen.replay import step_divergence
from synth_qwen.settings import DEFAULT_ACTIONS_PER_TURN  # for sessions whose metadata lacks it
from synth_qwen.tracing import LMEvent, Message, Session, Step



@dataclass
class TeacherTurn:
    turn: int
    reply: dict  # the assistant message the teacher sends in the student's state
    differs: bool  # the student's turn was invalid (or its call failed), or began with another action
    agrees: bool = False  # the student executed exactly the teacher's actions (no preference between them)
    asleep: bool = False  # the turn began asleep: Crafter turns every action into sleep until energy is full


def teacher_replies(session: Session, events: list[LMEvent], by_turn: dict[int, list[Message]],
                    steps: list[Step]) -> tuple[list[TeacherTurn], str | None]:
    """The teacher's reply on every turn of the session (events by turn, messages by turn, steps in
    step order); ([], the first divergence as one line) when the replay does not reproduce what the
    student saw and did."""
    env = CrafterEnv(seed=session.seed, difficulty=session.difficulty)
    env.start()
    start = env._player.pos.copy()
    max_actions = session.metadata.get("actions_per_turn", DEFAULT_ACTIONS_PER_TURN)
    teacher = ExpertAgent(max_actions=max_actions, seed=session.seed)
    tool_mode = "tools" if session.tools else "text"
    executed: dict[int, list[Step]] = {}
    for row in steps:
        executed.setdefault(row.turn, []).append(row)
    replies = []
    for event in events:
        turn = event.turn
        observation = observe(env)
        sent = by_turn[turn][0].content if turn in by_turn else None
        if sent is None or not (sent == observation.text or sent.endswith("\n" + observation.text)):
            return [], f"turn {turn}: the replay does not show the observation the student was sent"
        actions, reasoning = teacher.act(observation)
        student = executed.get(turn, [])  # none when the student's turn was invalid
        for row in student:
            divergence = step_divergence(env, row, env.act(row.action))
            if divergence:
                return [], divergence
        teacher.executed([row.action for row in student], tuple(int(v) for v in env._player.pos - start))
        reply = builtin_reply(actions, reasoning, tool_mode, session.session_id, turn).assistant_message()
        replies.append(TeacherTurn(turn, reply, differs=not student or student[0].action != actions[0],
                                   agrees=[row.action for row in student] == list(actions),
                                   asleep=observation.sleeping))
        if student and student[-1].done_reason:
            break  # the episode ended on this turn
    return replies, None
