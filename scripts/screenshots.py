"""Screenshots of the trace browser's main pages for the README, from a real DB played here.

    .venv/bin/python scripts/screenshots.py [OUT_DIR=docs/screenshots]

builtin:random and builtin:expert play the same 10 seeds × 30 turns on easy (run_crafter), the
expert's turns become SFT examples (filter_traces, so the episode page shows the marks), then
`python -m synth_qwen.view` is opened in headless Chromium (tests/browser.py). About a minute.
"""
import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from browser import Browser  # noqa: E402
from rollout_helpers import db_sessions  # noqa: E402
from view_helpers import ViewServer, filter_sft, play  # noqa: E402

FRAME_LOADED = ("(() => { const img = document.querySelector('.player img'); "
                "return img && img.complete && img.naturalWidth > 0; })()")


async def shoot(server: ViewServer, out: Path, best, worst) -> None:
    async with Browser(1400, 900) as b:
        await b.goto(server.url + "/")
        await b.screenshot(out / "runs.png")
        await b.goto(server.url + "/run/expert?per=10")
        await b.screenshot(out / "run.png", full_page=True)
        await b.goto(f"{server.url}/episode/{best.session_id}")
        await b.click("#turn-6 h3 a[data-goto]")
        for _ in range(2):
            await b.key("ArrowRight")
        await b.wait_for(FRAME_LOADED)
        await b.eval("window.scrollTo(0, document.getElementById('turn-6').offsetTop - 60)")
        await b.screenshot(out / "episode.png")
        await b.goto(server.url + "/compare?a=random&b=expert")
        await b.screenshot(out / "compare.png")
        await b.goto(f"{server.url}/pair?a={worst.session_id}&b={best.session_id}&turn=6")
        await b.wait_for(FRAME_LOADED)
        await b.screenshot(out / "pair.png")


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        db_url = f"sqlite:///{folder / 'traces.db'}"
        play(folder, db_url, "random", "builtin:random", 10, 30)
        play(folder, db_url, "expert", "builtin:expert", 10, 30)
        filter_sft(folder, db_url, folder / "sft.jsonl", models="builtin:expert")
        sessions = db_sessions(folder / "traces.db")
        best = max((s for s in sessions if s.run_id == "expert"), key=lambda s: (s.num_achievements, -s.seed))
        worst = next(s for s in sessions if s.run_id == "random" and s.seed == best.seed)
        with ViewServer(db_url, folder / "view.log", view_sft_jsonl=folder / "sft.jsonl") as server:
            asyncio.run(shoot(server, out, best, worst))
    for path in sorted(out.glob("*.png")):
        print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}  {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
