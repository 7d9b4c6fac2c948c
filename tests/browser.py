"""A real headless Chromium (Debian's package) driven over the Chrome DevTools Protocol, with aiohttp's
websocket client: no chromedriver, no downloaded browser build.

    async with Browser() as browser:
        await browser.goto("http://127.0.0.1:8100/")
        rows = await browser.eval("document.querySelectorAll('tr.run').length")
        await browser.key("ArrowRight")
        await browser.screenshot(Path("runs.png"))
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

KEY_CODES = {"ArrowLeft": 37, "ArrowRight": 39, " ": 32, "Enter": 13}


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# What DevTools answers when the page navigated while it evaluated: a poll should try again.
NAVIGATION_ERRORS = ("Inspected target navigated or closed", "Execution context was destroyed",
                     "Cannot find context with specified id")


class BrowserError(Exception):
    pass


class Browser:
    def __init__(self, width: int = 1280, height: int = 900):
        self.width, self.height = width, height
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.events: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self) -> "Browser":
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.process = subprocess.Popen(
            [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = await self._devtools_port()
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as response:
            pages = [t for t in await response.json() if t["type"] == "page"]
        self.ws = await self.http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                        deviceScaleFactor=1, mobile=False)
        return self

    async def __aexit__(self, *exc) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.http.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    async def _devtools_port(self, timeout_s: float = 30) -> int:
        """Chromium writes its port (and browser path) to DevToolsActivePort once it listens."""
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited with status {self.process.returncode}")
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            await asyncio.sleep(0.05)
        raise BrowserError("chromium did not open its DevTools port")

    async def _read(self) -> None:
        async for message in self.ws:
            data = message.json()
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.put_nowait(data)

    async def send(self, method: str, **params) -> dict:
        call_id = next(self.ids)
        self.pending[call_id] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        answer = await asyncio.wait_for(self.pending[call_id], 60)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer["result"]

    async def goto(self, url: str) -> None:
        """Navigate and wait for the load event (every image the page asked for has arrived)."""
        while not self.events.empty():
            self.events.get_nowait()
        await self.send("Page.navigate", url=url)
        while (await asyncio.wait_for(self.events.get(), 60))["method"] != "Page.loadEventFired":
            pass

    async def eval(self, expression: str):
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 30):
        """Poll until the expression is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = await self.eval(expression)
            except BrowserError as error:
                if not any(text in str(error) for text in NAVIGATION_ERRORS):
                    raise
                value = None  # the page is being replaced (a click navigated): ask the new one
            if value:
                return value
            await asyncio.sleep(0.05)
        raise BrowserError(f"timed out waiting for {expression}")

    async def key(self, key: str) -> None:
        """A real key press, as the keyboard sends it (keydown, then keyup) to the focused page."""
        code = KEY_CODES[key]
        common = {"key": key, "code": "Space" if key == " " else key, "windowsVirtualKeyCode": code,
                  "nativeVirtualKeyCode": code}
        await self.send("Input.dispatchKeyEvent", type="keyDown", **common)
        await self.send("Input.dispatchKeyEvent", type="keyUp", **common)

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = await self.eval(f"(() => {{ const el = document.querySelector({selector!r}); el.scrollIntoView("
                              f"{{block: 'center'}}); const r = el.getBoundingClientRect(); "
                              f"return [r.left + r.width / 2, r.top + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    async def screenshot(self, path: Path, full_page: bool = False) -> None:
        params = {"format": "png"}
        if full_page:
            size = await self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size[0],
                                                            "height": min(size[1], 4000), "scale": 1})
        shot = await self.send("Page.captureScreenshot", **params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def need_chromium() -> None:
    """Skip a browser test where Chromium is missing; in CI that is a failure."""
    import pytest

    if chromium_path() is None:
        if in_ci():
            pytest.fail("CI must run the browser tests: chromium is missing (scripts/ensure_chromium.sh installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium, or bash scripts/ensure_chromium.sh)")
