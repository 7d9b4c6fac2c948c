"""The trace browser end to end: a DB played by the real run_crafter (builtin random and expert, and a
scripted model that writes HTML), `python -m synth_qwen.view` as a subprocess on 127.0.0.1, pages
fetched over HTTP, then driven in a real headless Chromium (tests/browser.py)."""
import asyncio
import hashlib
import io
import json
import os
import re
import sqlite3
import uuid
from html.parser import HTMLParser

import aiohttp
import markupsafe
import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from synth_qwen import metrics, replay, run_stats, stats, tracing
from browser import Browser, chromium_path, in_ci
from rollout_helpers import db_sessions, rollout_env, run_module
from view_helpers import XSS_MODEL, XSS_REASONING, XSS_REPLY, ViewServer, filter_sft, play, play_xss

SEEDS = [1, 2, 3, 4, 5]
TURNS = 8


def fingerprint(path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """rand and exp play the same seeds; xss writes <script>; the expert's turns became SFT examples."""
    folder = tmp_path_factory.mktemp("view")
    db = folder / "traces.db"
    db_url = f"sqlite:///{db}"
    play(folder, db_url, "rand", "builtin:random", len(SEEDS), TURNS)
    play(folder, db_url, "exp", "builtin:expert", len(SEEDS), TURNS)
    play_xss(folder, db_url)
    filter_sft(folder, db_url, folder / "sft.jsonl", models="builtin:expert", min_total_reward=0)
    before = fingerprint(db)
    with ViewServer(db_url, folder / "view.log", view_sft_jsonl=folder / "sft.jsonl") as server:
        server.db, server.folder, server.before = db, folder, before
        server.sessions = {(s.run_id, s.seed): s for s in db_sessions(db)}
        yield server


def session(site, run_id, seed=1):
    return site.sessions[(run_id, seed)]


def escaped(text):
    """As the pages write a value (Jinja2's autoescape)."""
    return str(markupsafe.escape(text))


class Parsed(HTMLParser):
    """A page as a browser's parser reads it: its elements, their attributes, its text."""

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.elements, self.text = [], []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def rows(html, css):
    return re.findall(rf"<tr class='{css}'>(.*?)</tr>", html, re.S)


# ---------------------------------------------------------------------------------------
# Over HTTP

def test_runs_list_shows_each_run_with_its_numbers_and_filters(site):
    page = site.text("/")
    runs = {re.search(r">([^<]+)</a>", row).group(1): row for row in rows(page, "run")}
    assert set(runs) == {"rand", "exp", "xss"}
    expert = [site.sessions[("exp", seed)].achievements for seed in SEEDS]
    cells = re.findall(r"<td class='n'>([^<]*)</td>", runs["exp"])
    assert cells == ["5", f"{run_stats.progression_pct(expert):.1f}", f"{run_stats.crafter_score(expert):.1f}"]
    assert "builtin:expert" in runs["exp"] and "easy" in runs["exp"] and "rollout" in runs["exp"]
    only = site.text("/?model=builtin%3Aexpert")
    assert [re.search(r">([^<]+)</a>", row).group(1) for row in rows(only, "run")] == ["exp"]
    assert rows(site.text("/?purpose=eval"), "run") == []


def test_run_page_sorts_and_paginates_in_sql(site):
    ordered = sorted(SEEDS, key=lambda seed: (-session(site, "exp", seed).total_reward, seed))
    seen = []
    for page in (1, 2, 3):
        html = site.text(f"/run/exp?sort=reward&dir=desc&per=2&page={page}")
        seen += [int(re.search(r">(\d+)</a>", row).group(1)) for row in rows(html, "episode-row")]
        assert f"page {page} of 3 (5 episodes)" in html
    assert seen == ordered
    first = site.text("/run/exp?per=2")
    assert "next-page" in first and "prev-page" not in first
    assert "next-page" not in site.text("/run/exp?per=2&page=3")
    chart = site.text("/run/exp").split("<table class='bars'>")[1]
    wood = sum("collect_wood" in session(site, "exp", seed).achievements for seed in SEEDS)
    assert chart.count("<tr><td>") == 22
    assert re.search(rf"<td>collect_wood</td>.*?<td class='n'>{wood}/5</td>", chart, re.S)
    for bad in ("/run/exp?sort=session_id", "/run/exp?per=0", "/run/exp?page=x"):
        assert site.get(bad)[0] == 400
    assert site.get("/run/nope")[0] == 404 and site.get("/episode/nope")[0] == 404


def test_episode_page_shows_every_turn_request_reply_and_steps(site):
    s = session(site, "exp", 2)
    html = site.text(f"/episode/{s.session_id}")
    engine = tracing.open_readonly(f"sqlite:///{site.db}")
    with engine.connect() as conn:
        by_turn = tracing.session_turn_messages(conn, s.session_id)
        steps = tracing.session_steps(conn, s.session_id)
    turns = re.findall(r"<div class='turn' id='turn-(\d+)' data-turn='\d+' data-first='(\d+)'", html)
    assert [int(t) for t, _ in turns] == sorted(by_turn)
    firsts = {int(t): int(first) for t, first in turns}
    for turn, messages in by_turn.items():
        assert f"<pre>{escaped(messages[0].content)}</pre>" in html  # the observation, escaped
        arguments = json.loads(messages[1].tool_calls[0]["function"]["arguments"])
        assert escaped(arguments["reasoning"]) in html
        assert firsts[turn] == sum(step.turn < turn for step in steps)  # the frame that turn saw
    for step in steps:
        assert f"data-goto='{step.step_index}'>step {step.step_index}</a> {step.action}" in html
    assert f"data-last='{len(steps)}'" in html and "/replay.gif" in html


def test_frames_are_the_deterministic_replay_rendered_on_demand(site):
    s = session(site, "exp", 3)
    engine = tracing.open_readonly(f"sqlite:///{site.db}")
    frames, divergence = replay.replay(replay.load_trace(engine, s.session_id), replay.FRAME_SIZE)
    assert divergence is None and len(frames) == s.env_steps + 1
    for step in (0, 5, s.env_steps, 2):  # forward, to the end, then back (the replay restarts)
        status, body, kind = site.get(f"/episode/{s.session_id}/frame/{step}.png")
        assert status == 200 and kind == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")), frames[step])
    assert site.get(f"/episode/{s.session_id}/frame/{s.env_steps + 1}.png")[0] == 404
    status, gif, kind = site.get(f"/episode/{s.session_id}/replay.gif")
    assert status == 200 and kind == "image/gif" and Image.open(io.BytesIO(gif)).n_frames == len(frames)


def test_request_link_gives_the_exact_request_of_the_turn(site):
    s = session(site, "exp", 1)
    engine = tracing.open_readonly(f"sqlite:///{site.db}")
    expected = dict(tracing.rebuild_requests(engine, s.session_id))[4]
    status, body, kind = site.get(f"/episode/{s.session_id}/request/4.json")
    assert status == 200 and kind == "application/json" and json.loads(body) == expected


def test_turns_that_became_training_examples_are_marked(site):
    examples = [json.loads(line)["metadata"] for line in (site.folder / "sft.jsonl").read_text().splitlines()]
    marked = {(m["session_id"], m["turn"]) for m in examples}
    assert marked
    for run_id in ("exp", "rand"):
        s = session(site, run_id, 4)
        html = site.text(f"/episode/{s.session_id}")
        for turn_html in re.findall(r"<div class='turn' id='turn-(\d+)'.*?<h3>(.*?)</h3>", html, re.S):
            turn, head = int(turn_html[0]), turn_html[1]
            assert ("SFT example" in head) == ((s.session_id, turn) in marked), (run_id, turn)


def without_nonce(html):
    return re.sub(r"nonce='[^']+'", "", html)


def test_a_kept_episode_page_follows_the_sft_file_and_its_session_row(site, tmp_path):
    """A finished episode's block is rendered once and kept: a changed SFT file or session row still shows."""
    db = tmp_path / "traces.db"
    with sqlite3.connect(f"file:{site.db}?mode=ro", uri=True) as source, sqlite3.connect(db) as copy:
        source.backup(copy)  # a copy to change (read-only: site.db stays as it was)
    sft = tmp_path / "sft.jsonl"
    sft.write_text("")
    s, other = session(site, "exp", 4), session(site, "rand", 4)
    paths = (f"/episode/{s.session_id}", f"/pair?a={s.session_id}&b={other.session_id}")
    with ViewServer(f"sqlite:///{db}", tmp_path / "view.log", view_sft_jsonl=sft) as server:
        unmarked = [without_nonce(server.text(path)) for path in paths]
        assert [without_nonce(server.text(path)) for path in paths] == unmarked  # kept: the same page
        assert not any("SFT example" in html for html in unmarked)
        sft.write_text((site.folder / "sft.jsonl").read_text())
        os.utime(sft, ns=(sft.stat().st_atime_ns, sft.stat().st_mtime_ns + 10**9))  # a new mtime, surely
        marked = [without_nonce(server.text(path)) for path in paths]
        assert marked == [without_nonce(site.text(path)) for path in paths]  # as a fresh server renders it
        assert all("SFT example" in html for html in marked)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE session_traces SET status_reason = 'changed under the view' WHERE session_id = ?",
                         (s.session_id,))
        assert all("(changed under the view)" in server.text(path) for path in paths)


def test_every_model_written_string_is_escaped(site):
    s = session(site, "xss", 1)
    for path in ("/", "/run/xss", f"/episode/{s.session_id}", f"/pair?a={s.session_id}&b={s.session_id}"):
        html = site.text(path)
        for raw in (XSS_REPLY, XSS_REASONING, XSS_MODEL):
            assert raw not in html  # never as markup
        assert "<script>window" not in html and "<img src=x" not in html
    episode = site.text(f"/episode/{s.session_id}")
    assert escaped(XSS_REPLY) in episode and escaped(XSS_REASONING) in episode
    assert escaped(XSS_MODEL) in site.text("/")


# What the templates write, and nothing else: a value that reached a page unescaped adds an element or
# an attribute (`<script>`, `onfocus=`) that is not here.
PAGE_ELEMENTS = {"html", "head", "meta", "title", "style", "body", "header", "main", "a", "span", "form", "select",
                 "option", "button", "p", "table", "tr", "th", "td", "div", "pre", "h2", "h3", "b", "i", "ul", "li",
                 "details", "summary", "img", "input", "script"}
PAGE_ATTRIBUTES = {"charset", "href", "class", "id", "name", "value", "selected", "method", "action", "style", "alt",
                   "type", "min", "max", "nonce", "data-turn", "data-first", "data-last", "data-goto", "data-frames",
                   "data-start"}


def test_a_value_from_the_db_is_text_or_an_attribute_value_never_markup(site):
    """The model's name (quotes of both kinds: it sits in <option value='...'>), its reply and reasoning,
    parsed as a browser parses the page: they come back whole as text and values, and add nothing."""
    s = session(site, "xss", 1)
    pages = ("/", "/run/xss", f"/episode/{s.session_id}", f"/pair?a={s.session_id}&b={s.session_id}",
             "/compare?a=xss&b=rand")
    parsed = {path: Parsed(site.text(path)) for path in pages}
    for path, page in parsed.items():
        assert {tag for tag, _ in page.elements} <= PAGE_ELEMENTS, path
        assert {name for _, attrs in page.elements for name in attrs} <= PAGE_ATTRIBUTES, path
        scripts = [attrs for tag, attrs in page.elements if tag == "script"]
        assert len(scripts) <= 1 and all(set(attrs) == {"nonce"} for attrs in scripts), path
    runs = parsed["/"]
    assert XSS_MODEL in [attrs.get("value") for tag, attrs in runs.elements if tag == "option"]
    assert XSS_MODEL in runs.text
    episode = parsed[f"/episode/{s.session_id}"]
    assert XSS_MODEL in episode.text and XSS_REPLY in episode.text and XSS_REASONING in episode.text


def test_pages_run_only_their_own_script(site):
    """Defense in depth: the policy allows only the script carrying this response's nonce."""
    async def fetch(path):
        async with aiohttp.ClientSession() as http, http.get(site.url + path) as response:
            return response.headers["Content-Security-Policy"], await response.text()
    policy, html = asyncio.run(fetch(f"/episode/{session(site, 'xss', 1).session_id}"))
    nonce = re.search(r"script-src 'nonce-([^']+)';", policy).group(1)
    assert re.findall(r"<script[^>]*>", html) == [f"<script nonce='{nonce}'>"]
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    assert asyncio.run(fetch(f"/episode/{session(site, 'xss', 1).session_id}"))[0] != policy  # a new nonce each time


def test_compare_pairs_seeds_with_differences_and_links_to_the_same_turn(site):
    html = site.text("/compare?a=rand&b=exp")
    found = rows(html, "pair-row")
    assert [int(re.match(r"<td>(\d+)</td>", row).group(1)) for row in found] == SEEDS
    for seed, row in zip(SEEDS, found):
        a, b = session(site, "rand", seed), session(site, "exp", seed)
        assert f"{b.num_achievements - a.num_achievements:+d}</td>" in row
        assert a.session_id in row and b.session_id in row
    first = [session(site, "rand", seed).achievements for seed in SEEDS]
    second = [session(site, "exp", seed).achievements for seed in SEEDS]
    low, high = stats.paired_difference_ci(first, second, run_stats.progression_pct)
    diff = run_stats.progression_pct(second) - run_stats.progression_pct(first)
    assert f"B − A {diff:+.1f} points (95 % CI {low:+.1f} to {high:+.1f}" in html
    by_diff = rows(site.text("/compare?a=rand&b=exp&sort=diff&per=2&page=1"), "pair-row")
    best = max(SEEDS, key=lambda seed: (session(site, "exp", seed).num_achievements
                                        - session(site, "rand", seed).num_achievements, -seed))
    assert len(by_diff) == 2 and by_diff[0].startswith(f"<td>{best}</td>")
    pair = site.text(f"/pair?a={session(site, 'rand', 2).session_id}&b={session(site, 'exp', 2).session_id}&turn=3")
    assert "id='A-turn-3'" in pair and "id='B-turn-3'" in pair and "data-turn='3'" in pair
    assert site.get("/compare?a=rand&b=nope")[0] == 404 and site.get("/compare?a=rand")[0] == 400


def test_paired_mean_ci_equals_the_general_paired_bootstrap(site):
    first = [session(site, "rand", seed).achievements for seed in SEEDS]
    second = [session(site, "exp", seed).achievements for seed in SEEDS]
    differences = [100 * (metrics.progression(b) - metrics.progression(a)) for a, b in zip(first, second)]
    assert stats.paired_mean_difference_ci(differences) == pytest.approx(
        stats.paired_difference_ci(first, second, run_stats.progression_pct))


def test_browsing_never_writes_the_db(site):
    for s in list(site.sessions.values())[:3]:
        site.get(f"/episode/{s.session_id}")
        site.get(f"/episode/{s.session_id}/frame/1.png")
    assert fingerprint(site.db) == site.before
    wal = site.db.with_name(site.db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # SQLite's reader files, never a written page
    engine = tracing.open_readonly(f"sqlite:///{site.db}")
    with pytest.raises(sa.exc.OperationalError, match="readonly|read-only|query_only"):
        with engine.begin() as conn:
            conn.execute(tracing.experiments.insert().values(id="x", purpose="rollout"))


def test_bad_settings_and_missing_db_stop_with_one_line(tmp_path):
    env = rollout_env(tmp_path, view_port="abc")
    done = run_module("synth_qwen.view", env, tmp_path, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "VIEW_PORT='abc' is invalid" in done.stderr
    done = run_module("synth_qwen.view", rollout_env(tmp_path), tmp_path, timeout=60)
    assert done.returncode == 2 and "does not exist" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "traces.db").exists()  # nothing created


POSTGRES = os.environ.get("SYNTH_TEST_POSTGRES_URL", "")


@pytest.mark.skipif(not POSTGRES, reason="SYNTH_TEST_POSTGRES_URL is not set (make test sets it)")
def test_view_reads_postgres_read_only(tmp_path):
    import psycopg
    name = "synth_test_" + uuid.uuid4().hex[:10]
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = POSTGRES.rsplit("/", 1)[0] + "/" + name
    try:
        play(tmp_path, url, "pg", "builtin:expert", 2, 4)
        with ViewServer(url, tmp_path / "view.log") as server:
            assert "pg" in server.text("/")
            sid = re.search(r"href='/episode/(sess_\w+)'", server.text("/run/pg")).group(1)
            assert "turn 3" in server.text(f"/episode/{sid}")
            assert server.get(f"/episode/{sid}/frame/2.png")[0] == 200
        engine = tracing.open_readonly(url)
        with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
            with engine.begin() as conn:
                conn.execute(tracing.experiments.insert().values(id="x", purpose="rollout"))
        engine.dispose()
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# ---------------------------------------------------------------------------------------
# In a real browser

def need_chromium():
    if chromium_path() is None:
        if in_ci():
            pytest.fail("CI must run the browser tests: chromium is missing (scripts/ensure_chromium.sh installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium, or bash scripts/ensure_chromium.sh)")


def browse(steps):
    """Run `steps(browser)` in a fresh headless Chromium."""
    need_chromium()

    async def main():
        async with Browser() as browser:
            return await steps(browser)
    return asyncio.run(main())


def test_browser_runs_list_and_pagination(site):
    async def steps(b):
        await b.goto(site.url + "/")
        assert await b.eval("document.querySelectorAll('tr.run').length") == 3
        await b.click("tr.run a[href='/run/exp']")
        await b.wait_for("location.pathname === '/run/exp' && document.readyState === 'complete'")
        await b.goto(site.url + "/run/exp?per=2")
        seeds = "[...document.querySelectorAll('tr.episode-row td:first-child')].map(td => +td.innerText)"
        assert await b.eval(seeds) == [1, 2]
        await b.click("a.next-page")
        await b.wait_for("location.search.includes('page=2') && document.readyState === 'complete'")
        assert await b.eval(seeds) == [3, 4]
        await b.click("a.sort-achievements")  # sorted descending, from the first page
        await b.wait_for("location.search.includes('sort=achievements') && document.readyState === 'complete'")
        return await b.eval("[...document.querySelectorAll('tr.episode-row td:nth-child(3)')].map(td => +td.innerText)")
    shown = browse(steps)
    assert shown == sorted((session(site, "exp", seed).num_achievements for seed in SEEDS), reverse=True)[:2]


def test_browser_episode_frames_step_with_keys_buttons_and_turn_links(site):
    s = session(site, "exp", 1)
    frame = ("(() => { const p = document.querySelector('.player'), img = p.querySelector('img'); "
             "return img.complete && img.naturalWidth > 0 ? [+p.querySelector('.counter').innerText, "
             "img.getAttribute('src')] : null; })()")

    async def steps(b):
        await b.goto(f"{site.url}/episode/{s.session_id}")
        seen = [await b.wait_for(frame)]
        await b.key("ArrowRight")
        await b.key("ArrowRight")
        seen.append(await b.wait_for(f"(() => {{ const f = {frame}; return f && f[0] === 2 ? f : null; }})()"))
        await b.click(".player .next")
        seen.append(await b.wait_for(f"(() => {{ const f = {frame}; return f && f[0] === 3 ? f : null; }})()"))
        await b.key("ArrowLeft")
        seen.append(await b.wait_for(f"(() => {{ const f = {frame}; return f && f[0] === 2 ? f : null; }})()"))
        await b.click("#turn-5 h3 a[data-goto]")
        first = int(await b.eval("document.getElementById('turn-5').dataset.first"))
        seen.append(await b.wait_for(f"(() => {{ const f = {frame}; return f && f[0] === {first} ? f : null; }})()"))
        current = await b.eval("[...document.querySelectorAll('.turn.current')].map(t => t.id)")
        await b.click(".player .play")
        played = await b.wait_for(f"(() => {{ const f = {frame}; return f && f[0] >= {first + 2} ? f : null; }})()")
        await b.click(".player .play")  # pause
        sizes = await b.eval("(() => { const img = document.querySelector('.player img'); "
                             "return [img.naturalWidth, img.naturalHeight]; })()")
        return seen, first, current, played, sizes

    seen, first, current, played, sizes = browse(steps)
    path = f"/episode/{s.session_id}/frame/"
    assert seen == [[0, path + "0.png"], [2, path + "2.png"], [3, path + "3.png"], [2, path + "2.png"],
                    [first, f"{path}{first}.png"]]
    assert "turn-5" in current and played[0] >= first + 2
    assert sizes == [replay.FRAME_SIZE, replay.FRAME_SIZE + replay.LINE_HEIGHT * replay.BANNER_LINES + 4]


def test_browser_compare_jumps_to_the_same_turn_in_both(site):
    async def steps(b):
        await b.goto(site.url + "/compare?a=rand&b=exp")
        assert await b.eval("document.querySelectorAll('tr.pair-row').length") == len(SEEDS)
        await b.click("tr.pair-row:nth-child(3) a.side")  # seed 2
        await b.wait_for("location.pathname === '/pair' && document.readyState === 'complete'")
        await b.eval("document.getElementById('turn').value = 4")
        await b.click("#turn-form button")
        state = ("[...document.querySelectorAll('.player')].map(p => +p.dataset.step).join()")
        expected = await b.eval("['A', 'B'].map(x => +document.getElementById(x + '-turn-4').dataset.first).join()")
        await b.wait_for(f"{state} === '{expected}'")
        current = await b.eval("[...document.querySelectorAll('.turn.current')].map(t => t.id)")
        return expected, current
    expected, current = browse(steps)
    assert {"A-turn-4", "B-turn-4"} <= set(current)


def test_browser_model_written_script_never_runs(site):
    s = session(site, "xss", 1)

    async def steps(b):
        results = []
        for path in ("/", "/run/xss", f"/episode/{s.session_id}", f"/pair?a={s.session_id}&b={s.session_id}"):
            await b.goto(site.url + path)
            await b.wait_for("document.readyState === 'complete'")
            await asyncio.sleep(0.3)  # an onerror handler would have fired by now: the image failed at once
            results.append(await b.eval("[typeof window.pwned, document.body.innerText]"))
        return results
    for pwned, text in browse(steps):
        assert pwned == "undefined"
    assert XSS_REPLY in text and XSS_REASONING in text  # shown as text


def test_eval_report_says_how_to_open_its_runs_in_the_browser(tmp_path):
    env = rollout_env(tmp_path, eval_models="builtin:random builtin:expert", eval_episodes=2, eval_run_id="ev",
                      crafter_max_steps=4, eval_replays="false", eval_report_dir=tmp_path / "report")
    done = run_module("synth_qwen.eval", env, tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    command = f"CRAFTER_DB_URL=sqlite:///{tmp_path / 'traces.db'} python -m synth_qwen.view"
    assert report["view"].startswith(command) and f"with its frames: {report['view']}\n" in done.stdout
    assert report["view"] in (tmp_path / "report" / "report.md").read_text()
    path = report["view"].split("http://127.0.0.1:8100")[1]
    assert path == "/compare?a=ev-m0&b=ev-m1"
    with ViewServer(f"sqlite:///{tmp_path / 'traces.db'}", tmp_path / "view.log") as server:
        assert len(rows(server.text(path), "pair-row")) == 2


def test_sft_marks_read_turn_relabelled_and_whole_episode_examples(tmp_path):
    from synth_qwen.view_queries import SftMarks
    lines = [{"messages": [], "metadata": {"session_id": "s1", "turn": 0}},
             {"messages": [], "metadata": {"session_id": "s1", "turn": 2, "relabelled_by": "builtin:expert"}},
             {"metadata": {"session_id": "s2", "turns": 7}, "messages": [{"content": ',"metadata":{}'}]},
             {"messages": []}]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines) + "not json\n")
    marks = SftMarks(path)
    marks.refresh()
    assert [marks.mark("s1", turn) for turn in range(3)] == ["SFT example", None,
                                                             "SFT example, relabelled by builtin:expert"]
    assert marks.mark("s2", 5) == "SFT example (whole episode)" and marks.mark("s3", 0) is None


def test_an_older_schema_is_named_not_upgraded(tmp_path):
    import sqlite3
    path = tmp_path / "traces.db"
    engine = tracing.open_db(f"sqlite:///{path}")
    engine.dispose()
    with sqlite3.connect(path) as db:  # what a v1 DB says
        db.execute("DELETE FROM schema_version")
        db.execute("INSERT INTO schema_version (version) VALUES (1)")
    before = fingerprint(path)
    done = run_module("synth_qwen.view", rollout_env(tmp_path), tmp_path, timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert f"schema v1, this code reads v{tracing.SCHEMA_VERSION}" in done.stderr and "filter_traces --dry-run" in done.stderr
    assert fingerprint(path) == before


def test_every_template_ships_in_the_package():
    """A non-editable install carries what the pages are built from: each file under synth_qwen/templates
    is package data in pyproject.toml."""
    from fnmatch import fnmatch
    from setuptools.config.pyprojecttoml import read_configuration
    from synth_qwen.view import TEMPLATES
    config = read_configuration(TEMPLATES.parents[1] / "pyproject.toml")["tool"]["setuptools"]
    assert "synth_qwen.templates" in config["packages"]
    shipped = config["package-data"]["synth_qwen.templates"]
    assert [p.name for p in TEMPLATES.iterdir() if not any(fnmatch(p.name, glob) for glob in shipped)] == []
