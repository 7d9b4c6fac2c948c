"""The trace browser's frames. Frames are not stored in traces: the episode is re-played from its seed
and recorded actions (the env is deterministic), rendered on demand one env step at a time and kept
in memory, shared by every request (they run in worker threads)."""
from __future__ import annotations

import io
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import sqlalchemy as sa
from PIL import Image

from synth_qwen import replay
from synth_qwen.crafter_env import CrafterEnv

FRAME_SIZE = replay.FRAME_SIZE
FRAMES_KEPT = 4000  # rendered PNGs kept in memory (about 15 KB each)
REPLAYERS_KEPT = 8  # episodes with a live env, positioned at the last frame asked for
GIFS_KEPT = 2


class ReplayDiverged(Exception):
    pass


class Replayer:
    """One episode's env, positioned at some step; moving forward costs one act per step."""

    def __init__(self, trace: replay.Trace):
        self.trace = trace
        self.lock = threading.Lock()
        self.env = None
        self.position = 0
        self.unlocked: list[str] = []
        self.new: list[str] = []

    def restart(self) -> None:
        self.env = CrafterEnv(seed=self.trace.session.seed, difficulty=self.trace.session.difficulty)
        self.env.start()
        self.position, self.unlocked, self.new = 0, [], []

    def frame_png(self, step: int) -> bytes:
        with self.lock:
            if self.env is None or self.position > step:
                self.restart()
            while self.position < step:
                row = self.trace.steps[self.position]
                result = self.env.act(row.action)
                divergence = replay.step_divergence(self.env, row, result)
                if divergence:
                    self.env = None
                    raise ReplayDiverged(divergence)
                self.position += 1
                self.unlocked.extend(result.new_achievements)
                self.new = list(result.new_achievements)
            if step == 0:
                label = "start"
            else:
                row = self.trace.steps[step - 1]
                label = f"step {step}  turn {row.turn}  {row.action}"
            image = replay.frame(self.env, FRAME_SIZE, label, self.unlocked, self.new)
        out = io.BytesIO()
        Image.fromarray(image).save(out, "PNG")
        return out.getvalue()


class Lru(OrderedDict):
    """Keeps the `size` most recently used entries."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def hit(self, key):
        if key in self:
            self.move_to_end(key)
        return self.get(key)

    def put(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class Frames:
    """Rendered frames and live replayers, shared by every request."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.lock = threading.Lock()
        self.pngs, self.replayers, self.gifs = Lru(FRAMES_KEPT), Lru(REPLAYERS_KEPT), Lru(GIFS_KEPT)

    def replayer(self, session_id: str) -> Replayer:
        with self.lock:
            found = self.replayers.hit(session_id)
        if found is None:
            found = Replayer(replay.load_trace(self.engine, session_id))  # LookupError: no such episode
            with self.lock:
                found = self.replayers.setdefault(session_id, found)  # unless another request made one meanwhile
                self.replayers.put(session_id, found)
        return found

    def png(self, session_id: str, step: int) -> bytes:
        with self.lock:
            cached = self.pngs.hit((session_id, step))
        if cached is not None:
            return cached
        player = self.replayer(session_id)
        if not 0 <= step <= len(player.trace.steps):
            raise LookupError(f"episode {session_id} has frames 0..{len(player.trace.steps)}, not {step}")
        png = player.frame_png(step)
        with self.lock:
            self.pngs.put((session_id, step), png)
        return png

    def gif(self, session_id: str) -> bytes:
        with self.lock:
            cached = self.gifs.hit(session_id)
        if cached is not None:
            return cached
        frames, divergence = replay.replay(replay.load_trace(self.engine, session_id), FRAME_SIZE)
        if divergence:
            raise ReplayDiverged(divergence)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "episode.gif"
            replay.write_video(frames, path)
            data = path.read_bytes()
        with self.lock:
            self.gifs.put(session_id, data)
        return data
