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

Three modules: view_queries reads the DB (opened read-only, tracing.open_readonly) and the SFT
JSONL; view_frames re-plays episodes into frames; this one turns what they read into pages and
serves them. The HTML is in synth_qwen/templates (Jinja2, autoescape on): every value is escaped
as it is written into a page, since a model can write `<script>`.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import jinja2
import sqlalchemy as sa
from aiohttp import web
from markupsafe import Markup

from synth_qwen import access, metrics, run_stats, stats, tracing
from synth_qwen.settings import ViewSettings, exit_usage, load, redact
from synth_qwen.tracing import LMEvent, Message, Session, Step, session_traces as st
from synth_qwen.view_frames import Frames, Lru, ReplayDiverged
from synth_qwen.view_queries import (SORTS, Episode, SftMarks, distinct, episode_rows, load_episode, load_session,
                                     pair_count, paired_achievements, pairs_page, run_episodes, run_exists, runs)

PAGE_SIZE = 50  # episodes per page; ?per= changes it up to MAX_PAGE_SIZE
MAX_PAGE_SIZE = 500
PLAYER_FPS = 8
INVALID_FEEDBACK = "Your previous reply was invalid"  # how rollout's feedback line starts
BLOCKS_KEPT = 32  # finished episodes whose rendered turns are kept (a 300-turn episode's are about 0.6 MB)
TEMPLATES = Path(__file__).with_name("templates")


def browse_line(db_url: str, path: str = "/") -> str:
    """How to open the browser on a DB, for other modules' reports (eval, quickstart)."""
    port = ViewSettings.model_fields["view_port"].default
    return f"CRAFTER_DB_URL={redact(db_url)} python -m synth_qwen.view   then open http://127.0.0.1:{port}{path}"


def url(path: str, **query) -> str:
    query = {k: v for k, v in query.items() if v not in (None, "")}
    return path + ("?" + urlencode(query) if query else "")


def run_url(run_id: str, **query) -> str:
    return url(f"/run/{quote(run_id, safe='')}", **query)


def episode_url(session_id: str) -> str:
    return f"/episode/{quote(session_id, safe='')}"


# ---------------------------------------------------------------------------------------
# Templates

class JoinedLines(jinja2.FileSystemLoader):
    """An .html template's lines are joined with their indentation dropped, so templates read as
    indented HTML while pages stay one line. A space that matters is written inside a line."""

    def get_source(self, environment, template):
        source, filename, uptodate = super().get_source(environment, template)
        if template.endswith(".html"):
            source = "".join(line.strip() for line in source.splitlines())
        return source, filename, uptodate


def number(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def cost_text(cost) -> str:
    return "unknown" if cost is None else f"${cost:.4f}"


TEMPLATE_ENV = jinja2.Environment(
    loader=JoinedLines(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined,
    finalize=lambda value: "" if value is None else value, auto_reload=False)  # None shows as nothing
TEMPLATE_ENV.filters.update(fmt=format, number=number, cost=cost_text)
TEMPLATE_ENV.globals.update(url=url, run_url=run_url, episode_url=episode_url)
# every template compiled at start (a few tenths of a second) rather than in some page's first fetch
COMPILED = {name: TEMPLATE_ENV.get_template(name) for name in TEMPLATE_ENV.list_templates()}
EPISODE_BLOCK = COMPILED["episode_block.html"]  # its macro's output is what Blocks keeps


def page(template: str, title: str, script: bool = False, **values) -> web.Response:
    """A whole page. Besides escaping, the browser is told to run only this response's own script (its
    nonce): a string that slipped through unescaped still could not run."""
    nonce = secrets.token_urlsafe(16)
    policy = (f"default-src 'self'; img-src 'self'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
              f"connect-src 'self'; base-uri 'none'; form-action 'self'")
    text = TEMPLATE_ENV.get_template(template).render(title=title, script=script, nonce=nonce, fps=PLAYER_FPS,
                                                      **values)
    return web.Response(content_type="text/html", headers={"Content-Security-Policy": policy}, text=text)


# ---------------------------------------------------------------------------------------
# What each page shows (computed here; the templates only lay it out)

@dataclass
class Pager:
    page: int
    pages: int
    total: int
    noun: str
    previous: str | None
    next: str | None
    last: str


def pager(make_url, page_number: int, total: int, per: int, noun: str = "episodes") -> Pager:
    pages = max(1, -(-total // per))
    return Pager(page_number, pages, total, noun, make_url(page_number - 1) if page_number > 1 else None,
                 make_url(page_number + 1) if page_number < pages else None, make_url(pages))


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


def scores(episodes: list[list[str]]) -> dict | None:
    if not episodes:
        return None
    return {"progression": run_stats.progression_pct(episodes), "crafter": run_stats.crafter_score(episodes)}


def runs_page(engine: sa.Engine, query) -> web.Response:
    model, purpose = query.get("model") or None, query.get("purpose") or None
    found = runs(engine, model, purpose)
    return page("runs.html", "runs", runs=[(run, scores(run.episodes)) for run in found],
                run_ids=[run.run_id for run in found], models=distinct(engine, st.c.model), model=model,
                purposes=distinct(engine, st.c.purpose), purpose=purpose)


def run_page(engine: sa.Engine, run_id: str, query) -> web.Response:
    sort, descending, page_number, per = page_args(query, SORTS)
    everything = run_episodes(engine, run_id)
    if not everything:
        raise web.HTTPNotFound(text=f"no run {run_id!r} in this trace DB")
    finished = [row for row in everything if row.status != "incomplete"]
    episodes = [row.achievements or [] for row in finished]
    statuses: dict[str, int] = {}
    for row in everything:
        statuses[row.status] = statuses.get(row.status, 0) + 1
    turns = sum(row.turns or 0 for row in finished)
    summary = {"episodes": len(everything), "statuses": statuses,
               "progression": run_stats.progression_pct(episodes) if episodes else None,
               "crafter": run_stats.crafter_score(episodes) if episodes else None,
               "mean_reward": sum(row.total_reward or 0 for row in finished) / (len(finished) or 1),
               "invalid_pct": 100 * sum(row.invalid_turns or 0 for row in finished) / (turns or 1)}
    sort_links = []  # a column's link sorts by it, descending first; the sorted column's link turns it round
    for column in SORTS:
        turned = "asc" if sort == column and descending else "desc"
        sort_links.append({"column": column, "numeric": column not in ("seed", "status"),
                           "href": run_url(run_id, sort=column, dir=turned, per=per),
                           "arrow": (" ↓" if descending else " ↑") if sort == column else ""})
    paging = pager(lambda p: run_url(run_id, sort=sort, dir="desc" if descending else None, page=p, per=per),
                   page_number, len(everything), per)
    return page("run.html", f"run {run_id}", summary=summary, sort_links=sort_links, paging=paging,
                rows=episode_rows(engine, run_id, sort, descending, page_number, per),
                rates=run_stats.success_rates_with_ci(episodes) if episodes else {}, finished=len(episodes))


@dataclass
class Observation:
    feedback: str | None  # rollout's line saying the previous reply was invalid
    text: str


@dataclass
class ToolCall:
    name: str | None
    raw: str | None  # the arguments as the model wrote them
    parsed: bool  # they are a JSON object
    reasoning: str | None = None
    actions: list | None = None


@dataclass
class Reply:
    content: str | None
    calls: list[ToolCall]


@dataclass
class TurnView:
    turn: int
    first: int  # the frame the turn saw (frame k = the world after k env steps)
    last: int
    verdict: str | None  # why the call failed or its reply was invalid
    usage: str | None  # tokens, latency, finish reason, history
    mark: str | None  # how it became a training example
    observation: Observation | None
    reply: Reply | None
    results: list[Message]
    steps: list[tuple[int, str, list[str], str | None]]  # (step index, "action reward +r", unlocked, done reason)


@dataclass
class EpisodeView:
    session: tracing.Session
    turns: list[TurnView]
    frames: int  # the last frame: one per env step after the start


def observation(message: Message | None) -> Observation | None:
    if message is None:
        return None
    text = message.content or ""
    first, _, rest = text.partition("\n")
    return Observation(first, rest) if first.startswith(INVALID_FEEDBACK) else Observation(None, text)


def verdict(event: LMEvent | None) -> str | None:
    if event is not None and event.error:
        return f"call failed: {event.error}"
    if event is not None and event.valid is False:
        return f"invalid: {event.invalid_reason or ''}"
    return None


def usage(event: LMEvent | None) -> str | None:
    if event is None:
        return None
    return (f"{event.prompt_tokens or 0:,} + {event.completion_tokens or 0:,} tokens · "
            f"{number(event.latency_s, 2)} s · finish {event.finish_reason or ''} · "
            f"history turns {event.history_turns or []}")


def reply(message: Message | None) -> Reply | None:
    if message is None:
        return None
    calls = []
    for call in message.tool_calls or []:
        function = call.get("function", {})
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except json.JSONDecodeError:
            arguments = None
        if isinstance(arguments, dict):
            actions = arguments.get("actions")
            calls.append(ToolCall(function.get("name"), function.get("arguments"), True, arguments.get("reasoning"),
                                  actions if isinstance(actions, list) else [actions]))
        else:
            calls.append(ToolCall(function.get("name"), function.get("arguments"), False))
    return Reply(message.content, calls)


def episode_view(episode: Episode, marks: SftMarks) -> EpisodeView:
    """Every turn: what was new in the request, the reply, the result, the env steps."""
    s = episode.session
    steps_by_turn: dict[int, list[Step]] = {}
    for step in episode.steps:
        steps_by_turn.setdefault(step.turn, []).append(step)
    turns, frame = [], 0
    for turn in sorted(set(episode.by_turn) | set(episode.events)):
        messages = episode.by_turn.get(turn, [])
        steps = steps_by_turn.get(turn, [])
        first, frame = frame, frame + len(steps)
        event = episode.events.get(turn)
        turns.append(TurnView(turn, first, max(first, frame - 1) if steps else first, verdict(event), usage(event),
                              marks.mark(s.session_id, turn), observation(messages[0] if messages else None),
                              reply(messages[1] if len(messages) > 1 else None), messages[2:],
                              [(step.step_index, f"{step.action} reward {step.reward:+.1f}",
                                step.new_achievements or [], step.done_reason) for step in steps]))
    return EpisodeView(s, turns, len(episode.steps))


class Blocks:
    """An episode's block (header, turns, player) as rendered HTML. A finished episode never changes
    (it is written in one transaction when it ends), so its block is rendered once per SFT marks file
    and kept: a 300-turn block takes ~60 ms to read and render, a kept one nothing. Its session row is
    read every time and must equal the kept one's (the DB file may have been replaced)."""

    def __init__(self, engine: sa.Engine, marks: SftMarks):
        self.engine, self.marks = engine, marks
        self.lock = threading.Lock()
        self.kept = Lru(BLOCKS_KEPT)

    def block(self, session_id: str, prefix: str = "") -> tuple[Session, Markup]:
        self.marks.refresh()
        session = load_session(self.engine, session_id)
        if session is None:
            raise web.HTTPNotFound(text=f"no episode {session_id!r} in this trace DB")
        key = (session_id, prefix, self.marks.mtime)  # read before the marks are: never newer than them
        with self.lock:
            kept = self.kept.hit(key)
        if kept is not None and kept[0] == session:
            return kept
        html = EPISODE_BLOCK.module.episode_block(episode_view(load_episode(self.engine, session), self.marks),
                                                  prefix)
        if session.finished:
            with self.lock:
                self.kept.put(key, (session, html))
        return session, html


def episode_page(blocks: Blocks, session_id: str) -> web.Response:
    session, block = blocks.block(session_id)
    return page("episode.html", f"episode {session.session_id}", script=True, block=block)


def compare_page(engine: sa.Engine, query) -> web.Response:
    run_a, run_b = query.get("a", ""), query.get("b", "")
    if not run_a or not run_b:
        raise web.HTTPBadRequest(text="compare needs two runs: /compare?a=RUN&b=RUN")
    sort, _, page_number, per = page_args(query, ("seed", "diff", "-diff"))
    for run_id in (run_a, run_b):
        if not run_exists(engine, run_id):
            raise web.HTTPNotFound(text=f"no run {run_id!r} in this trace DB")
    paired = None
    found = paired_achievements(engine, run_a, run_b)
    if found:
        first, second = [a for a, _ in found], [b for _, b in found]
        differences = [100 * (metrics.progression(b) - metrics.progression(a)) for a, b in found]
        low, high = stats.paired_mean_difference_ci(differences)
        a, b = run_stats.progression_pct(first), run_stats.progression_pct(second)
        paired = {"seeds": len(found), "a": a, "b": b, "difference": b - a, "low": low, "high": high,
                  "score_difference": run_stats.crafter_score(second) - run_stats.crafter_score(first)}
    paging = pager(lambda p: url("/compare", a=run_a, b=run_b, sort=sort, page=p, per=per), page_number,
                   pair_count(engine, run_a, run_b), per, "paired seeds")
    return page("compare.html", f"compare {run_a} vs {run_b}", run_a=run_a, run_b=run_b, per=per, paired=paired,
                paging=paging, rows=pairs_page(engine, run_a, run_b, sort, page_number, per))


def pair_page(blocks: Blocks, query) -> web.Response:
    try:
        columns = [(label, *blocks.block(query.get(side, ""), label + "-")) for label, side in zip("AB", "ab")]
    except web.HTTPNotFound:
        raise web.HTTPNotFound(text="pair needs two session ids: /pair?a=SESSION&b=SESSION") from None
    try:
        turn = int(query.get("turn", 0))
    except ValueError:
        raise web.HTTPBadRequest(text="turn is a whole number") from None
    return page("pair.html", f"seed {columns[0][1].seed}: side by side", script=True, turn=turn, columns=columns)


# ---------------------------------------------------------------------------------------
# The server

def routes(engine: sa.Engine, blocks: Blocks, frames: Frames) -> web.RouteTableDef:
    table = web.RouteTableDef()

    async def run_sync(fn, *args):  # the DB and the replays block: keep the event loop free
        return await asyncio.to_thread(fn, *args)

    @table.get("/")
    async def index(request):
        return await run_sync(runs_page, engine, request.query)

    @table.get("/run/{run_id}")
    async def run(request):
        return await run_sync(run_page, engine, request.match_info["run_id"], request.query)

    @table.get("/episode/{session_id}")
    async def episode(request):
        return await run_sync(episode_page, blocks, request.match_info["session_id"])

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
                                     if load_session(engine, session_id) else []))
        if turn not in bodies:
            raise web.HTTPNotFound(text=f"no call on turn {turn} of episode {session_id!r}")
        return web.json_response(bodies[turn], dumps=lambda body: json.dumps(body, indent=2))

    @table.get("/compare")
    async def compare(request):
        return await run_sync(compare_page, engine, request.query)

    @table.get("/pair")
    async def pair(request):
        return await run_sync(pair_page, blocks, request.query)

    return table


def app(engine: sa.Engine, sft_jsonl: Path | None = None, api_key: str | None = None) -> web.Application:
    application = web.Application(middlewares=access.view_middlewares(api_key))
    application.add_routes(routes(engine, Blocks(engine, SftMarks(sft_jsonl)), Frames(engine)))
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
