"""The trace browser: runs, every episode turn by turn beside the game frame it was played in, two
runs side by side. A local web page (aiohttp, server-rendered HTML, a little inline JavaScript; no
build step, nothing fetched from the network).

    CRAFTER_DB_URL=sqlite:///traces/v3/lm_synth/traces.db python -m synth_qwen.view   # http://127.0.0.1:8100/

Settings (ViewSettings): CRAFTER_DB_URL, VIEW_HOST (127.0.0.1), VIEW_PORT (8100; 0 = any free port),
VIEW_SFT_JSONL (a filter_traces JSONL: the turns that became training examples are marked).

Pages: `/` runs (filter by model, purpose) · `/run/{run_id}` its episodes (sortable, paginated in
SQL) and the per-achievement chart · `/episode/{session_id}` turn by turn with a frame player ·
`/compare?a=RUN&b=RUN` two runs on the same seeds, the paired difference per seed ·
`/pair?a=SESSION&b=SESSION&turn=N` two episodes side by side at the same turn.

The DB is opened read-only (tracing.open_readonly). Frames are not stored in traces: the episode is
re-played from its seed and recorded actions (the env is deterministic), rendered on demand one
env step at a time and kept in memory. Every string from the DB is HTML-escaped: a model can write
`<script>`.
"""
from __future__ import annotations

import asyncio
import html
import io
import json
import secrets
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from aiohttp import web
from PIL import Image

from synth_qwen import access, metrics, replay, run_stats, stats, tracing
from synth_qwen.crafter_env import CrafterEnv
from synth_qwen.settings import ViewSettings, exit_usage, load, redact
from synth_qwen.tracing import LMEvent, Message, Session, Step, session_traces as st

PAGE_SIZE = 50  # episodes per page; ?per= changes it up to MAX_PAGE_SIZE
MAX_PAGE_SIZE = 500
FRAME_SIZE = replay.FRAME_SIZE
FRAMES_KEPT = 4000  # rendered PNGs kept in memory (about 15 KB each)
REPLAYERS_KEPT = 8  # episodes with a live env, positioned at the last frame asked for
GIFS_KEPT = 2
PLAYER_FPS = 8
INVALID_FEEDBACK = "Your previous reply was invalid"  # how rollout's feedback line starts


def browse_line(db_url: str, path: str = "/") -> str:
    """How to open the browser on a DB, for other modules' reports (eval, quickstart)."""
    port = ViewSettings.model_fields["view_port"].default
    return f"CRAFTER_DB_URL={redact(db_url)} python -m synth_qwen.view   then open http://127.0.0.1:{port}{path}"


# ---------------------------------------------------------------------------------------
# Reading the DB (every query names its columns; ORDER BY + LIMIT/OFFSET keep pages small)

RUN_COLUMNS = (st.c.run_id, st.c.model, st.c.difficulty, st.c.purpose, st.c.status, st.c.achievements,
               st.c.started_at)
EPISODE_COLUMNS = (st.c.session_id, st.c.seed, st.c.status, st.c.failure, st.c.achievements,
                   st.c.num_achievements, st.c.total_reward, st.c.turns, st.c.invalid_turns, st.c.env_steps,
                   st.c.prompt_tokens, st.c.completion_tokens, st.c.cost_usd)
TOKENS = sa.func.coalesce(st.c.prompt_tokens, 0) + sa.func.coalesce(st.c.completion_tokens, 0)
SORTS = {"seed": st.c.seed, "status": st.c.status, "achievements": st.c.num_achievements,
         "reward": st.c.total_reward, "turns": st.c.turns, "invalid": st.c.invalid_turns, "tokens": TOKENS,
         "cost": st.c.cost_usd}


@dataclass
class RunRow:
    run_id: str
    model: str
    difficulty: str
    purpose: str
    started_at: str
    statuses: dict
    episodes: list  # finished episodes' achievements

    @property
    def count(self) -> int:
        return sum(self.statuses.values())


def runs(engine: sa.Engine, model: str | None, purpose: str | None) -> list[RunRow]:
    """Every run (newest first) with its status counts and finished episodes' achievements."""
    query = sa.select(*RUN_COLUMNS)
    if model:
        query = query.where(st.c.model == model)
    if purpose:
        query = query.where(st.c.purpose == purpose)
    found: dict[str, RunRow] = {}
    with engine.connect() as conn:
        for row in conn.execute(query):
            run = found.setdefault(row.run_id, RunRow(row.run_id, row.model, row.difficulty, row.purpose,
                                                      row.started_at or "", {}, []))
            run.statuses[row.status] = run.statuses.get(row.status, 0) + 1
            run.started_at = min(run.started_at, row.started_at or run.started_at)
            if row.status != "incomplete":
                run.episodes.append(row.achievements or [])
    return sorted(found.values(), key=lambda run: run.started_at, reverse=True)


def distinct(engine: sa.Engine, column) -> list[str]:
    with engine.connect() as conn:
        return sorted(v for (v,) in conn.execute(sa.select(column).distinct()) if v is not None)


def run_episodes(engine: sa.Engine, run_id: str) -> list:
    """(status, achievements) of every episode of the run: what the summary and the chart need."""
    with engine.connect() as conn:
        return list(conn.execute(sa.select(st.c.status, st.c.achievements, st.c.total_reward, st.c.turns,
                                           st.c.invalid_turns).where(st.c.run_id == run_id)))


def episode_page(engine: sa.Engine, run_id: str, sort: str, descending: bool, page: int, per: int) -> list:
    order = SORTS[sort].desc() if descending else SORTS[sort].asc()
    query = (sa.select(*EPISODE_COLUMNS).where(st.c.run_id == run_id).order_by(order, st.c.seed)
             .limit(per).offset((page - 1) * per))
    with engine.connect() as conn:
        return list(conn.execute(query))


@dataclass
class Episode:
    session: Session
    by_turn: dict[int, list[Message]]
    events: dict[int, LMEvent]
    steps: list[Step]


def load_episode(engine: sa.Engine, session_id: str) -> Episode | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(st).where(st.c.session_id == session_id)).first()
        if row is None:
            return None
        return Episode(Session.from_row(row._mapping), tracing.session_turn_messages(conn, session_id),
                       {e.turn: e for e in tracing.session_events(conn, session_id)},
                       tracing.session_steps(conn, session_id))


def pairs_page(engine: sa.Engine, run_a: str, run_b: str, sort: str, page: int, per: int) -> list:
    a, b = st.alias("a"), st.alias("b")
    difference = b.c.num_achievements - a.c.num_achievements
    order = {"seed": (a.c.seed,), "diff": (difference.desc(), a.c.seed), "-diff": (difference.asc(), a.c.seed)}[sort]
    query = (sa.select(a.c.seed, *(c.label(f"a_{c.name}") for c in a.c if c.name in PAIR_FIELDS),
                       *(c.label(f"b_{c.name}") for c in b.c if c.name in PAIR_FIELDS))
             .join_from(a, b, sa.and_(a.c.seed == b.c.seed, b.c.run_id == run_b)).where(a.c.run_id == run_a)
             .order_by(*order).limit(per).offset((page - 1) * per))
    with engine.connect() as conn:
        return list(conn.execute(query))


PAIR_FIELDS = ("session_id", "status", "num_achievements", "achievements", "total_reward", "turns")


def paired_achievements(engine: sa.Engine, run_a: str, run_b: str) -> list[tuple[list, list]]:
    """(a's achievements, b's achievements) per seed both runs finished."""
    a, b = st.alias("a"), st.alias("b")
    query = (sa.select(a.c.achievements, b.c.achievements.label("b_achievements"))
             .join_from(a, b, sa.and_(a.c.seed == b.c.seed, b.c.run_id == run_b))
             .where(a.c.run_id == run_a, a.c.status != "incomplete", b.c.status != "incomplete"))
    with engine.connect() as conn:
        return [(row[0] or [], row[1] or []) for row in conn.execute(query)]


# ---------------------------------------------------------------------------------------
# Training examples: which turns of which episodes a filter_traces JSONL holds

class SftMarks:
    """(session_id, turn) -> how the turn became an example; read again when the file changes."""

    def __init__(self, path: Path | None):
        self.path, self.mtime, self.turns, self.whole = path, None, {}, set()

    def refresh(self) -> None:
        if self.path is None or not self.path.exists() or self.path.stat().st_mtime == self.mtime:
            return
        self.mtime = self.path.stat().st_mtime
        turns, whole = {}, set()
        with self.path.open() as lines:
            for line in lines:
                meta = example_metadata(line)
                if "session_id" not in meta:
                    continue
                if "turn" in meta:  # turn mode: one example per turn (relabelled ones say by whom)
                    turns[(meta["session_id"], meta["turn"])] = (
                        f"SFT example, relabelled by {meta['relabelled_by']}" if meta.get("relabelled_by")
                        else "SFT example")
                else:  # episode mode: the whole conversation is one example
                    whole.add(meta["session_id"])
        self.turns, self.whole = turns, whole

    def mark(self, session_id: str, turn: int) -> str | None:
        if session_id in self.whole:
            return "SFT example (whole episode)"
        return self.turns.get((session_id, turn))


def example_metadata(line: str) -> dict:
    """A JSONL line's metadata. filter_traces writes it last: parse only that, the messages are long."""
    key = ',"metadata":'
    start = line.rfind(key)
    if start >= 0:
        try:
            found = json.loads(line[start + len(key):].rstrip()[:-1])
            return found if isinstance(found, dict) else {}
        except json.JSONDecodeError:
            pass  # not the last key (another writer): read the whole line
    try:
        found = json.loads(line)
    except json.JSONDecodeError:
        return {}
    metadata = found.get("metadata") if isinstance(found, dict) else None
    return metadata if isinstance(metadata, dict) else {}


# ---------------------------------------------------------------------------------------
# Frames: re-play the episode, render the asked-for env step, keep it

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
    """Rendered frames and live replayers, shared by every request (they run in worker threads)."""

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


# ---------------------------------------------------------------------------------------
# HTML

def e(value) -> str:
    """Escaped for HTML text and attribute values: every DB string goes through here."""
    return html.escape("" if value is None else str(value), quote=True)


def url(path: str, **query) -> str:
    query = {k: v for k, v in query.items() if v not in (None, "")}
    return path + ("?" + urlencode(query) if query else "")


def run_url(run_id: str, **query) -> str:
    return url(f"/run/{quote(run_id, safe='')}", **query)


def episode_url(session_id: str) -> str:
    return f"/episode/{quote(session_id, safe='')}"


# .turn has content-visibility:auto: the browser skips laying out turns off screen (a 300-turn page loaded
# in Chromium in 659 ms without it, 251 ms with it: bench/bench_view.py).
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#22302a;color:#fff;padding:8px 16px}header a{color:#cfe8d6;margin-right:14px}
main{padding:12px 16px}a{color:#1a5e3a}table{border-collapse:collapse;background:#fff}
th,td{border-bottom:1px solid #e3e3e3;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f0;position:sticky;top:0}td.n,th.n{text-align:right}
pre{white-space:pre-wrap;margin:2px 0;font:12px/1.35 ui-monospace,monospace;max-width:70ch}
.badge{display:inline-block;border-radius:3px;padding:0 5px;margin:1px;background:#e4efe7;font-size:12px}
.gold{background:#ffe28a}.bad{background:#f7d4d4}.sft{background:#d6e4ff}.muted{color:#777}
.bars td{padding:1px 8px}.bar{position:relative;width:320px;height:13px;background:#eee}
.bar i{position:absolute;top:0;bottom:0;background:#7fb08f}.bar b{position:absolute;top:4px;height:5px;background:#2c5e3d}
.episode{display:flex;gap:16px;align-items:flex-start}.turns{flex:1;min-width:0}
.player{position:sticky;top:8px;background:#fff;border:1px solid #ddd;padding:8px;width:320px}
.player img{width:320px;image-rendering:pixelated;display:block;min-height:366px;background:#222}
.player .controls{margin-top:6px;display:flex;gap:6px;align-items:center;flex-wrap:wrap}
.player input[type=range]{width:100%}
.turn{border-bottom:1px solid #ddd;padding:6px 0;content-visibility:auto;contain-intrinsic-size:auto 320px}
.turn.current{background:#fff8df}.turn h3{font-size:14px;margin:0 0 4px}.role{font-weight:600;color:#555}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}.pair .column{height:86vh;display:flex;flex-direction:column}
.pair h2{font-size:15px;margin:4px 0}.pair .column>p{margin:2px 0;font-size:12px}
.pair .episode{flex-direction:column-reverse;flex:1;min-height:0}.pair .turns{overflow:auto;flex:1;min-height:0;width:100%}
.pair .player{position:static;width:auto}.pair .player img{width:240px;min-height:0}
.pager a,.pager span{margin-right:8px}
"""

PLAYER_JS = """
const players = [...document.querySelectorAll('.player')].map((el, index) => {
  const img = el.querySelector('img'), counter = el.querySelector('.counter'), range = el.querySelector('input');
  const playButton = el.querySelector('.play'), note = el.querySelector('.note');
  const last = +el.dataset.last, frames = el.dataset.frames, scope = el.closest('.episode');
  let step = -1, timer = null;
  function show(k) {
    k = Math.max(0, Math.min(last, k));
    if (k === step) return;
    step = k; el.dataset.step = k; counter.textContent = k; range.value = k; note.textContent = '';
    img.src = frames + k + '.png';
    if (k < last) new Image().src = frames + (k + 1) + '.png';  // the next frame, while this one shows
    scope.querySelectorAll('.turn').forEach(row => row.classList.toggle('current',
      +row.dataset.first <= k && k <= +row.dataset.last));
  }
  img.addEventListener('error', () => fetch(img.src).then(r => r.text()).then(t => { note.textContent = t; }));
  function toggle() {
    if (timer) { clearInterval(timer); timer = null; playButton.textContent = 'play'; return; }
    playButton.textContent = 'pause';
    timer = setInterval(() => { if (step >= last) toggle(); else show(step + 1); }, 1000 / FPS);
  }
  el.querySelector('.prev').onclick = () => show(step - 1);
  el.querySelector('.next').onclick = () => show(step + 1);
  playButton.onclick = toggle;
  range.oninput = () => show(+range.value);
  scope.querySelectorAll('[data-goto]').forEach(a => a.addEventListener('click', ev => {
    ev.preventDefault(); show(+a.dataset.goto); }));
  show(+el.dataset.start);
  return {show, toggle, get step() { return step; }, scope};
});
document.addEventListener('keydown', ev => {
  if (ev.target.tagName === 'INPUT' && ev.target.type !== 'range') return;
  if (ev.key === 'ArrowRight') players.forEach(p => p.show(p.step + 1));
  else if (ev.key === 'ArrowLeft') players.forEach(p => p.show(p.step - 1));
  else if (ev.key === ' ') players.forEach(p => p.toggle());
  else return;
  ev.preventDefault();
});
function gotoTurn(turn) {  // the pair page: the same turn in both episodes
  players.forEach(p => {
    const rows = [...p.scope.querySelectorAll('.turn')];
    const row = rows.find(r => +r.dataset.turn === turn) || rows[rows.length - 1];
    if (!row) return;
    p.show(+row.dataset.first);
    row.scrollIntoView({block: 'start'});
  });
  const box = document.getElementById('turn'); if (box) box.value = turn;
}
const turnForm = document.getElementById('turn-form');
if (turnForm) {
  turnForm.onsubmit = ev => { ev.preventDefault(); gotoTurn(+document.getElementById('turn').value); };
  if (+turnForm.dataset.turn >= 0) gotoTurn(+turnForm.dataset.turn);
}
"""


def page(title: str, body: str, script: bool = False) -> web.Response:
    """A whole page. Besides escaping, the browser is told to run only this response's own script (its
    nonce): a string that slipped through unescaped still could not run."""
    nonce = secrets.token_urlsafe(16)
    js = f"<script nonce='{nonce}'>const FPS = {PLAYER_FPS};{PLAYER_JS}</script>" if script else ""
    policy = (f"default-src 'self'; img-src 'self'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
              f"connect-src 'self'; base-uri 'none'; form-action 'self'")
    return web.Response(content_type="text/html", headers={"Content-Security-Policy": policy}, text=(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{STYLE}</style>"
        f"</head><body><header><a href='/'>runs</a><span>{e(title)}</span></header><main>{body}</main>{js}"
        f"</body></html>"))


def badges(names, css: str = "") -> str:
    return "".join(f"<span class='badge {css}'>{e(name)}</span>" for name in names or [])


def statuses_text(statuses: dict) -> str:
    return ", ".join(f"{e(name)} {count}" for name, count in sorted(statuses.items()))


def number(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def cost_text(cost) -> str:
    return "unknown" if cost is None else f"${cost:.4f}"


def select(name: str, values: list[str], chosen: str | None, blank: str) -> str:
    options = [f"<option value=''>{e(blank)}</option>"] + [
        f"<option value='{e(v)}'{' selected' if v == chosen else ''}>{e(v)}</option>" for v in values]
    return f"<select name='{name}'>{''.join(options)}</select>"


def pager(make_url, page_number: int, total: int, per: int, noun: str = "episodes") -> str:
    pages = max(1, -(-total // per))
    prev = f"<a class='prev-page' href='{e(make_url(page_number - 1))}'>← previous</a>" if page_number > 1 else ""
    nxt = f"<a class='next-page' href='{e(make_url(page_number + 1))}'>next →</a>" if page_number < pages else ""
    return (f"<p class='pager'>{prev}<span>page {page_number} of {pages} ({total:,} {noun})</span>{nxt}"
            f"<a href='{e(make_url(pages))}'>last</a></p>")


def achievement_chart(episodes: list[list[str]]) -> str:
    """Success % per achievement: a bar, and its 95 % Wilson interval as a dark line."""
    if not episodes:
        return "<p class='muted'>no finished episodes yet</p>"
    rows = []
    for name, rate in run_stats.success_rates_with_ci(episodes).items():
        low, high = rate["ci95_pct"]
        rows.append(f"<tr><td>{e(name)}</td><td><div class='bar'><i style='width:{rate['rate_pct']}%'></i>"
                    f"<b style='left:{low}%;width:{high - low:.1f}%'></b></div></td>"
                    f"<td class='n'>{rate['rate_pct']:.0f} %</td><td class='muted'>({low:.0f}–{high:.0f})</td>"
                    f"<td class='n'>{rate['successes']}/{len(episodes)}</td></tr>")
    return ("<table class='bars'><tr><th>achievement</th><th>episodes that unlocked it</th><th class='n'>%</th>"
            f"<th>95 % CI</th><th class='n'>n</th></tr>{''.join(rows)}</table>")


def score_cells(episodes: list[list[str]]) -> str:
    if not episodes:
        return "<td class='n'>–</td><td class='n'>–</td>"
    return (f"<td class='n'>{run_stats.progression_pct(episodes):.1f}</td>"
            f"<td class='n'>{run_stats.crafter_score(episodes):.1f}</td>")


# ---------------------------------------------------------------------------------------
# Pages

def runs_html(engine: sa.Engine, query) -> web.Response:
    model, purpose = query.get("model") or None, query.get("purpose") or None
    found = runs(engine, model, purpose)
    rows = "".join(
        f"<tr class='run'><td><a href='{e(run_url(r.run_id))}'>{e(r.run_id)}</a></td><td>{e(r.model)}</td>"
        f"<td>{e(r.difficulty)}</td><td>{e(r.purpose)}</td><td class='n'>{r.count:,}</td>"
        f"<td>{statuses_text(r.statuses)}</td>{score_cells(r.episodes)}<td>{e(r.started_at[:19])}</td></tr>"
        for r in found)
    run_ids = [r.run_id for r in found]
    filters = (f"<form method='get'>{select('model', distinct(engine, st.c.model), model, 'every model')} "
               f"{select('purpose', distinct(engine, st.c.purpose), purpose, 'every purpose')} "
               f"<button>filter</button></form>")
    compare = (f"<form method='get' action='/compare' id='compare-form'>compare {select('a', run_ids, None, 'run A')}"
               f" with {select('b', run_ids, None, 'run B')} <button>compare</button> (same seeds, paired)</form>")
    body = (f"{filters}<p>{len(found)} runs</p><table><tr><th>run</th><th>model</th><th>difficulty</th>"
            f"<th>purpose</th><th class='n'>episodes</th><th>status</th><th class='n'>progression %</th>"
            f"<th class='n'>Crafter score</th><th>started</th></tr>{rows}</table><p>{compare}</p>")
    return page("runs", body)


def page_args(query, sorts) -> tuple[str, bool, int, int]:
    sort = query.get("sort", "seed")
    if sort not in sorts:
        raise web.HTTPBadRequest(text=f"sort must be one of {', '.join(sorts)}")
    try:
        page_number, per = int(query.get("page", 1)), int(query.get("per", PAGE_SIZE))
    except ValueError:
        raise web.HTTPBadRequest(text="page and per are whole numbers") from None
    if page_number < 1 or not 1 <= per <= MAX_PAGE_SIZE:
        raise web.HTTPBadRequest(text=f"page >= 1 and 1 <= per <= {MAX_PAGE_SIZE}")
    return sort, query.get("dir") == "desc", page_number, per


def run_html(engine: sa.Engine, run_id: str, query) -> web.Response:
    sort, descending, page_number, per = page_args(query, SORTS)
    everything = run_episodes(engine, run_id)
    if not everything:
        raise web.HTTPNotFound(text=f"no run {run_id!r} in this trace DB")
    finished = [row for row in everything if row.status != "incomplete"]
    episodes = [row.achievements or [] for row in finished]
    statuses: dict[str, int] = {}
    for row in everything:
        statuses[row.status] = statuses.get(row.status, 0) + 1
    n = len(finished) or 1
    turns = sum(row.turns or 0 for row in finished)
    summary = (f"<p>{len(everything):,} episodes ({statuses_text(statuses)}) · progression "
               f"{number(run_stats.progression_pct(episodes) if episodes else None)} % · Crafter score "
               f"{number(run_stats.crafter_score(episodes) if episodes else None)} · mean reward "
               f"{sum(row.total_reward or 0 for row in finished) / n:.2f} · invalid turns "
               f"{100 * sum(row.invalid_turns or 0 for row in finished) / (turns or 1):.1f} %</p>")

    def link(column: str) -> str:
        desc = "asc" if sort == column and descending else "desc"
        arrow = (" ↓" if descending else " ↑") if sort == column else ""
        css = " class='n'" if column not in ("seed", "status") else ""
        return f"<th{css}><a class='sort-{column}' href='{e(run_url(run_id, sort=column, dir=desc, per=per))}'>{column}{arrow}</a></th>"

    rows = "".join(
        f"<tr class='episode-row'><td><a href='{e(episode_url(r.session_id))}'>{r.seed}</a></td>"
        f"<td>{e(r.status)}{' (' + e(r.failure) + ')' if r.failure else ''}</td>"
        f"<td class='n'>{r.num_achievements or 0}</td><td>{badges(r.achievements)}</td>"
        f"<td class='n'>{number(r.total_reward)}</td><td class='n'>{r.turns or 0}</td>"
        f"<td class='n'>{r.invalid_turns or 0}</td><td class='n'>{(r.prompt_tokens or 0) + (r.completion_tokens or 0):,}</td>"
        f"<td class='n'>{cost_text(r.cost_usd)}</td></tr>"
        for r in episode_page(engine, run_id, sort, descending, page_number, per))
    head = "".join(link(c) for c in ("seed", "status", "achievements")) + "<th>unlocked</th>" + "".join(
        link(c) for c in ("reward", "turns", "invalid", "tokens", "cost"))
    paging = pager(lambda p: run_url(run_id, sort=sort, dir="desc" if descending else None, page=p, per=per),
                   page_number, len(everything), per)
    body = (f"{summary}{paging}<table id='episodes'><tr>{head}</tr>{rows}</table>{paging}"
            f"<h2>Achievements</h2>{achievement_chart(episodes)}")
    return page(f"run {run_id}", body)


def reply_html(message: Message | None) -> str:
    """The assistant's reply: its text, and each tool call's reasoning and actions."""
    if message is None:
        return "<p class='muted'>no reply recorded</p>"
    parts = [f"<pre>{e(message.content)}</pre>"] if message.content else []
    for call in message.tool_calls or []:
        function = call.get("function", {})
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except json.JSONDecodeError:
            arguments = None
        if isinstance(arguments, dict):
            actions = arguments.get("actions")
            parts.append(f"<div>call <b>{e(function.get('name'))}</b>: reasoning <pre>{e(arguments.get('reasoning'))}</pre>"
                         f"actions {badges(actions if isinstance(actions, list) else [actions])}</div>")
        else:
            parts.append(f"<div>call <b>{e(function.get('name'))}</b> with unparsable arguments "
                         f"<pre>{e(function.get('arguments'))}</pre></div>")
    return "".join(parts) or "<p class='muted'>empty reply</p>"


def observation_html(message: Message | None) -> str:
    if message is None:
        return ""
    text = message.content or ""
    first, _, rest = text.partition("\n")
    if first.startswith(INVALID_FEEDBACK):
        return f"<div class='badge bad'>{e(first)}</div><pre>{e(rest)}</pre>"
    return f"<pre>{e(text)}</pre>"


def turns_html(episode: Episode, marks: SftMarks, prefix: str) -> tuple[str, int]:
    """Every turn: what was new in the request, the reply, the result, the env steps. Also the
    number of the last turn."""
    s = episode.session
    steps_by_turn: dict[int, list[Step]] = {}
    for step in episode.steps:
        steps_by_turn.setdefault(step.turn, []).append(step)
    turns = sorted(set(episode.by_turn) | set(episode.events))
    out, frame = [], 0  # frame k = the world after k env steps; a turn starts at the frame it saw
    for turn in turns:
        messages = episode.by_turn.get(turn, [])
        event = episode.events.get(turn)
        steps = steps_by_turn.get(turn, [])
        first, frame = frame, frame + len(steps)
        verdict = ""
        if event is not None and event.error:
            verdict = f"<span class='badge bad'>call failed: {e(event.error)}</span>"
        elif event is not None and event.valid is False:
            verdict = f"<span class='badge bad'>invalid: {e(event.invalid_reason)}</span>"
        mark = marks.mark(s.session_id, turn)
        sft = f"<span class='badge sft'>{e(mark)}</span>" if mark else ""
        usage = (f"<span class='muted'>{event.prompt_tokens or 0:,} + {event.completion_tokens or 0:,} tokens · "
                 f"{number(event.latency_s, 2)} s · finish {e(event.finish_reason)} · history turns "
                 f"{e(event.history_turns or [])}</span>") if event else ""
        results = "".join(f"<div><span class='role'>{e(m.role)} result</span><pre>{e(m.content)}</pre></div>"
                          for m in messages[2:])
        step_rows = "".join(
            f"<li><a href='#' data-goto='{step.step_index}'>step {step.step_index}</a> {e(step.action)} "
            f"reward {step.reward:+.1f} {badges(step.new_achievements, 'gold')}"
            f"{' <b>' + e(step.done_reason) + '</b>' if step.done_reason else ''}</li>" for step in steps)
        reply = messages[1] if len(messages) > 1 else None
        out.append(
            f"<div class='turn' id='{prefix}turn-{turn}' data-turn='{turn}' data-first='{first}' "
            f"data-last='{max(first, frame - 1) if steps else first}'>"
            f"<h3><a href='#' data-goto='{first}'>turn {turn}</a> {verdict} {sft} {usage} "
            f"<a class='muted' href='{e(episode_url(s.session_id))}/request/{turn}.json'>request</a></h3>"
            f"<div><span class='role'>observation</span>{observation_html(messages[0] if messages else None)}</div>"
            f"<div><span class='role'>reply</span>{reply_html(reply)}</div>{results}"
            f"<ul>{step_rows}</ul></div>")
    return "".join(out), (turns[-1] if turns else 0)


def player_html(episode: Episode) -> str:
    s = episode.session
    last = len(episode.steps)
    base = episode_url(s.session_id)
    return (f"<div class='player' data-frames='{e(base)}/frame/' data-last='{last}' data-start='0'>"
            f"<img alt='game frame'><div class='controls'><button class='prev'>◀</button>"
            f"<button class='play'>play</button><button class='next'>▶</button>"
            f"<span>step <b class='counter'>0</b> / {last}</span>"
            f"<a href='{e(base)}/replay.gif'>GIF</a></div><input type='range' min='0' max='{last}' value='0'>"
            f"<div class='note muted'></div><div class='muted'>← → step · space play/pause</div></div>")


def episode_header(episode: Episode) -> str:
    s = episode.session
    return (f"<p><a href='{e(run_url(s.run_id))}'>run {e(s.run_id)}</a> · model <b>{e(s.model)}</b> · "
            f"{e(s.difficulty)} · seed {s.seed} · <b>{e(s.status)}</b>"
            f"{' (' + e(s.status_reason) + ')' if s.status_reason else ''} · reward {s.total_reward:+.1f} · "
            f"{s.turns} turns ({s.invalid_turns} invalid) · {s.env_steps} env steps · "
            f"{s.prompt_tokens + s.completion_tokens:,} tokens · {cost_text(s.cost_usd)}</p>"
            f"<p>achievements {badges(s.achievements, 'gold') or '<span class=muted>none</span>'}</p>")


def episode_block(episode: Episode, marks: SftMarks, prefix: str = "") -> str:
    turns, _ = turns_html(episode, marks, prefix)
    system = (f"<details><summary>system prompt</summary><pre>{e(episode.session.system_prompt)}</pre></details>"
              if episode.session.system_prompt else "")
    return (f"{episode_header(episode)}{system}<div class='episode'><div class='turns'>{turns}</div>"
            f"{player_html(episode)}</div>")


def compare_html(engine: sa.Engine, query) -> web.Response:
    run_a, run_b = query.get("a", ""), query.get("b", "")
    if not run_a or not run_b:
        raise web.HTTPBadRequest(text="compare needs two runs: /compare?a=RUN&b=RUN")
    sort, _, page_number, per = page_args(query, ("seed", "diff", "-diff"))
    for run_id in (run_a, run_b):
        with engine.connect() as conn:
            if conn.execute(sa.select(st.c.session_id).where(st.c.run_id == run_id).limit(1)).first() is None:
                raise web.HTTPNotFound(text=f"no run {run_id!r} in this trace DB")
    paired = paired_achievements(engine, run_a, run_b)
    summary = "<p>the two runs share no finished seed</p>"
    if paired:
        first, second = [a for a, _ in paired], [b for _, b in paired]
        differences = [100 * (metrics.progression(b) - metrics.progression(a)) for a, b in paired]
        low, high = stats.paired_mean_difference_ci(differences)
        diff = run_stats.progression_pct(second) - run_stats.progression_pct(first)
        score = run_stats.crafter_score(second) - run_stats.crafter_score(first)
        summary = (f"<p id='paired'>{len(paired):,} paired seeds · progression A {run_stats.progression_pct(first):.1f} %, "
                   f"B {run_stats.progression_pct(second):.1f} % · <b>B − A {diff:+.1f} points (95 % CI {low:+.1f} "
                   f"to {high:+.1f}, paired bootstrap over seeds)</b> · Crafter score B − A {score:+.1f}</p>")
    rows = "".join(
        f"<tr class='pair-row'><td>{r.seed}</td>"
        f"<td><a href='{e(episode_url(r.a_session_id))}'>{e(r.a_status)}</a> {r.a_num_achievements or 0} · "
        f"{number(r.a_total_reward)}</td><td><a href='{e(episode_url(r.b_session_id))}'>{e(r.b_status)}</a> "
        f"{r.b_num_achievements or 0} · {number(r.b_total_reward)}</td>"
        f"<td class='n'>{(r.b_num_achievements or 0) - (r.a_num_achievements or 0):+d}</td>"
        f"<td class='n'>{(r.b_total_reward or 0) - (r.a_total_reward or 0):+.1f}</td>"
        f"<td><a class='side' href='{e(url('/pair', a=r.a_session_id, b=r.b_session_id))}'>side by side</a></td></tr>"
        for r in pairs_page(engine, run_a, run_b, sort, page_number, per))
    with engine.connect() as conn:
        a, b = st.alias("a"), st.alias("b")
        total = conn.execute(sa.select(sa.func.count()).select_from(a).join(
            b, sa.and_(a.c.seed == b.c.seed, b.c.run_id == run_b)).where(a.c.run_id == run_a)).scalar()
    sorted_by = lambda s, label: f"<a href='{e(url('/compare', a=run_a, b=run_b, sort=s, per=per))}'>{label}</a>"
    paging = pager(lambda p: url("/compare", a=run_a, b=run_b, sort=sort, page=p, per=per), page_number, total, per,
                   "paired seeds")
    body = (f"<p>A = <a href='{e(run_url(run_a))}'>{e(run_a)}</a>, B = <a href='{e(run_url(run_b))}'>{e(run_b)}</a>"
            f"</p>{summary}{paging}<table id='pairs'><tr><th>{sorted_by('seed', 'seed')}</th>"
            f"<th>A: status, achievements · reward</th><th>B: status, achievements · reward</th>"
            f"<th class='n'>Δ achievements ({sorted_by('diff', '↓')} {sorted_by('-diff', '↑')})</th>"
            f"<th class='n'>Δ reward</th><th></th></tr>{rows}</table>{paging}")
    return page(f"compare {run_a} vs {run_b}", body)


def pair_html(engine: sa.Engine, marks: SftMarks, query) -> web.Response:
    found = [load_episode(engine, query.get(side, "")) for side in ("a", "b")]
    if None in found:
        raise web.HTTPNotFound(text="pair needs two session ids: /pair?a=SESSION&b=SESSION")
    try:
        turn = int(query.get("turn", 0))
    except ValueError:
        raise web.HTTPBadRequest(text="turn is a whole number") from None
    columns = "".join(f"<div class='column'><h2>{label}: {e(ep.session.model)}</h2>{episode_block(ep, marks, label + '-')}</div>"
                      for label, ep in zip("AB", found))
    control = (f"<form id='turn-form' data-turn='{turn}'>turn <input id='turn' type='number' min='0' value='{turn}'>"
               f"<button>show this turn in both</button></form>")
    return page(f"seed {found[0].session.seed}: side by side", f"{control}<div class='pair'>{columns}</div>", script=True)


# ---------------------------------------------------------------------------------------
# The server

def routes(engine: sa.Engine, marks: SftMarks, frames: Frames) -> web.RouteTableDef:
    table = web.RouteTableDef()

    async def run_sync(fn, *args):  # the DB and the replays block: keep the event loop free
        return await asyncio.to_thread(fn, *args)

    @table.get("/")
    async def index(request):
        return await run_sync(runs_html, engine, request.query)

    @table.get("/run/{run_id}")
    async def run_page(request):
        return await run_sync(run_html, engine, request.match_info["run_id"], request.query)

    @table.get("/episode/{session_id}")
    async def episode(request):
        def build():
            marks.refresh()
            found = load_episode(engine, request.match_info["session_id"])
            if found is None:
                raise web.HTTPNotFound(text=f"no episode {request.match_info['session_id']!r} in this trace DB")
            return page(f"episode {found.session.session_id}", episode_block(found, marks), script=True)
        return await run_sync(build)

    @table.get("/episode/{session_id}/frame/{step:\\d+}.png")
    async def frame(request):
        try:
            png = await run_sync(frames.png, request.match_info["session_id"], int(request.match_info["step"]))
        except LookupError as error:
            raise web.HTTPNotFound(text=str(error)) from None
        except ReplayDiverged as error:
            raise web.HTTPConflict(text=f"the replay does not reproduce the trace at {error}") from None
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @table.get("/episode/{session_id}/replay.gif")
    async def gif(request):
        try:
            data = await run_sync(frames.gif, request.match_info["session_id"])
        except LookupError as error:
            raise web.HTTPNotFound(text=str(error)) from None
        except ReplayDiverged as error:
            raise web.HTTPConflict(text=f"the replay does not reproduce the trace at {error}") from None
        return web.Response(body=data, content_type="image/gif")

    @table.get("/episode/{session_id}/request/{turn:\\d+}.json")
    async def request_json(request):
        session_id, turn = request.match_info["session_id"], int(request.match_info["turn"])
        bodies = dict(await run_sync(lambda: list(tracing.rebuild_requests(engine, session_id))
                                     if load_episode(engine, session_id) else []))
        if turn not in bodies:
            raise web.HTTPNotFound(text=f"no call on turn {turn} of episode {session_id!r}")
        return web.json_response(bodies[turn], dumps=lambda body: json.dumps(body, indent=2))

    @table.get("/compare")
    async def compare(request):
        return await run_sync(compare_html, engine, request.query)

    @table.get("/pair")
    async def pair(request):
        def build():
            marks.refresh()
            return pair_html(engine, marks, request.query)
        return await run_sync(build)

    return table


def app(engine: sa.Engine, sft_jsonl: Path | None = None, api_key: str | None = None) -> web.Application:
    application = web.Application(middlewares=access.view_middlewares(api_key))
    application.add_routes(routes(engine, SftMarks(sft_jsonl), Frames(engine)))
    return application


async def serve(s: ViewSettings, engine: sa.Engine) -> None:
    runner = web.AppRunner(app(engine, s.view_sft_jsonl, s.view_api_key), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, s.view_host, s.view_port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"view: http://{s.view_host}:{port}/ (trace DB {redact(s.crafter_db_url)}, read-only; Ctrl-C stops)"
          + ("; key required: add ?key=<VIEW_API_KEY> once" if s.view_api_key else ""), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> int:
    s = load(ViewSettings)
    access.exposure_or_exit(access.VIEW, s.view_host, s.view_api_key, s.view_allow_no_auth)
    if s.view_sft_jsonl is not None and not s.view_sft_jsonl.is_file():
        exit_usage(f"VIEW_SFT_JSONL={str(s.view_sft_jsonl)!r} is not a file (write one with python -m "
                   f"synth_qwen.filter_traces, or leave it unset)")
    try:
        engine = tracing.open_readonly(s.crafter_db_url)
    except (tracing.MissingDatabase, sa.exc.SQLAlchemyError) as error:
        exit_usage(redact(str(error).splitlines()[0]))
    try:
        asyncio.run(serve(s, engine))
    except KeyboardInterrupt:
        pass
    except OSError as error:  # the port is taken, the address is not ours
        exit_usage(f"cannot listen on {s.view_host}:{s.view_port}: {error.strerror} (set VIEW_PORT/VIEW_HOST)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
