"""Re-play a traced episode in Crafter, check that it reproduces, and write an animated GIF.

    python -m synth_qwen.replay SESSION_ID [--db URL] [--out replays/SESSION_ID.gif] [--size 320] [--fps 8]

Flags, else CRAFTER_DB_URL, REPLAY_OUT, REPLAY_SIZE, REPLAY_FPS (environment, then .env; settings.py).

The env is deterministic, so a trace's seed, difficulty and actions (session_timesteps, in step
order) must reproduce its recorded reward and new achievements at every step. A divergence means
a corrupted trace or one recorded by different game code: it is reported and the exit status is 1.
Each frame shows the step, turn and action, and the achievements unlocked so far. `--out x.mp4`
writes an MP4 when imageio can (pip install imageio-ffmpeg).
"""
from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from PIL import Image, ImageDraw, ImageFont

from synth_qwen import preflight, tracing
from synth_qwen.atomic_file import atomic_path
from synth_qwen.tracing import Session, Step
from synth_qwen.crafter_env import ACHIEVEMENTS, CrafterEnv, StepResult
from synth_qwen.settings import ReplaySettings, exit_usage, load

FRAME_SIZE = ReplaySettings.model_fields["replay_size"].default  # pixels; the game is square, the banner above
FPS = ReplaySettings.model_fields["replay_fps"].default
LINE_HEIGHT = 14
BANNER_LINES = 3  # the step line, then two lines of achievements
REWARD_TOLERANCE = 1e-9  # rewards are multiples of 0.1 stored as floats: exact in practice


@dataclass
class Trace:
    session: Session
    steps: list[Step]  # in step order


def load_trace(engine: sa.Engine, session_id: str) -> Trace:
    """The session row and its env steps; LookupError (one line) when there is nothing to replay."""
    found = tracing.sessions(engine, tracing.session_traces.c.session_id == session_id)
    if not found:
        raise LookupError(f"no session {session_id!r} in the trace DB")
    if not found[0].finished:
        raise LookupError(f"session {session_id} never finished (status incomplete): nothing to replay")
    with engine.connect() as conn:
        return Trace(found[0], tracing.session_steps(conn, session_id))


def step_divergence(env: CrafterEnv, row: Step, result: StepResult) -> str | None:
    """How a re-played step differs from its trace row, as one line; None when it reproduced."""
    recorded_new = list(row.new_achievements or [])
    if (env.steps != row.step_index or abs(result.reward - row.reward) > REWARD_TOLERANCE
            or list(result.new_achievements) != recorded_new or result.end_reason != row.done_reason):
        return (f"step {row.step_index} (turn {row.turn}, {row.action}): the trace records "
                f"reward {row.reward:+.1f}, new achievements {recorded_new or 'none'}, end "
                f"{row.done_reason}; the replay gives reward {result.reward:+.1f}, new "
                f"achievements {list(result.new_achievements) or 'none'}, end {result.end_reason}")
    return None


def replay(trace: Trace, size: int | None = None) -> tuple[list[np.ndarray], str | None]:
    """Re-play the trace; returns the frames (only when `size` is given) and the first divergence
    from the trace as one line, or None when every step reproduced exactly."""
    session = trace.session
    env = CrafterEnv(seed=session.seed, difficulty=session.difficulty)
    env.start()
    unlocked: list[str] = []
    frames = [frame(env, size, "start", unlocked, [])] if size else []
    total_reward = 0.0
    for row in trace.steps:
        result = env.act(row.action)
        divergence = step_divergence(env, row, result)
        if divergence:
            return frames, divergence
        total_reward += result.reward
        unlocked.extend(result.new_achievements)
        if size:
            label = f"step {env.steps}  turn {row.turn}  {row.action}"
            frames.append(frame(env, size, label, unlocked, result.new_achievements))
    recorded = sorted(session.achievements)
    if recorded != list(env.achievements):
        return frames, (f"end of episode: the trace records achievements {recorded}, "
                        f"the replay unlocked {list(env.achievements)}")
    if abs(total_reward - session.total_reward) > 1e-6:
        return frames, (f"end of episode: the trace records total reward {session.total_reward}, "
                        f"the replay gives {total_reward:.6g}")
    return frames, None


def banner_font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


FONT = banner_font()


def frame(env: CrafterEnv, size: int, label: str, unlocked: list[str], new) -> np.ndarray:
    """The rendered game under a banner: step, turn, action, achievement count (gold when one was
    just unlocked); then the achievements so far, newest last."""
    banner = LINE_HEIGHT * BANNER_LINES + 4
    canvas = Image.new("RGB", (size, size + banner), (20, 20, 20))
    canvas.paste(Image.fromarray(env.render((size, size))), (0, banner))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), label, fill="white", font=FONT)
    count = f"{len(unlocked)}/{len(ACHIEVEMENTS)} achievements"
    gold_if_new = (255, 215, 0) if new else "white"
    draw.text((size - 4 - draw.textlength(count, font=FONT), 2), count, fill=gold_if_new, font=FONT)
    lines = textwrap.wrap(", ".join(unlocked) or "no achievements yet", width=max(20, size // 7))
    if len(lines) > 2:  # keep the newest: they end the list
        lines = ["… " + lines[-2], lines[-1]]
    for i, line in enumerate(lines):
        draw.text((4, 2 + LINE_HEIGHT * (i + 1)), line, fill=(180, 220, 180), font=FONT)
    return np.asarray(canvas)


def write_video(frames: list[np.ndarray], path: Path, fps: int = FPS) -> None:
    """GIF (looping) by default; MP4 when the path says so and an imageio video plugin exists."""
    import imageio.v3 as iio  # a dependency of crafter itself

    with atomic_path(path, suffix=path.suffix) as temp:  # never half a video at `path`; imageio reads the suffix
        if path.suffix.lower() == ".mp4":
            try:
                iio.imwrite(temp, np.stack(frames), fps=fps, macro_block_size=1)
            except (ImportError, ValueError, RuntimeError, OSError):
                raise RuntimeError("cannot write MP4: imageio has no video backend here; "
                                   "pip install imageio-ffmpeg, or use --out x.gif") from None
        else:
            iio.imwrite(temp, np.stack(frames), extension=".gif", duration=1000 / fps, loop=0)


def replay_to_file(engine: sa.Engine, session_id: str, path: Path, size: int = FRAME_SIZE) -> str | None:
    """Re-play one session into `path`; the divergence line when it did not reproduce (no file then)."""
    frames, divergence = replay(load_trace(engine, session_id), size)
    if divergence is None:
        write_video(frames, path)
    return divergence


def main(argv: list[str] | None = None) -> int:
    s = load(ReplaySettings, argv=sys.argv[1:] if argv is None else argv)
    out = s.replay_out or Path("replays") / f"{s.session_id}.gif"
    preflight.ready_or_exit(db=(s.crafter_db_url, False), files={"REPLAY_OUT": out})
    try:
        engine = tracing.open_db(s.crafter_db_url, create=False)
        trace = load_trace(engine, s.session_id)
    except (tracing.MissingDatabase, LookupError) as error:
        exit_usage(str(error))
    session = trace.session
    print(f"replaying {s.session_id}: {session.model} on {session.difficulty}, seed {session.seed}, "
          f"{len(trace.steps)} env steps", file=sys.stderr)
    frames, divergence = replay(trace, s.replay_size)
    if divergence:
        print(f"error: the replay does not reproduce the trace at {divergence}. The trace is corrupted, or it "
              f"was recorded by different game code (crafter version, difficulty presets).", file=sys.stderr)
        return 1
    try:
        write_video(frames, out, s.replay_fps)
    except RuntimeError as error:
        exit_usage(str(error))
    print(f"reproduced exactly: {len(trace.steps)} steps, reward {session.total_reward:+.1f}, "
          f"achievements: {', '.join(session.achievements) or 'none'}")
    print(f"wrote {out} ({len(frames)} frames, {s.replay_fps} fps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
