"""Who may use serve and view: never an open server on the network by accident (synth_qwen/access.py).

A host other machines can reach needs a key, or an explicit opt-in that is then warned about at every
start. Those starts are tested on a port held by a socket that is bound on every interface but never
listens, so the module gets as far as binding (after its warning) and nobody can connect to anything.
The key itself is tested on 127.0.0.1: view takes it as `?key=` once (a cookie keeps it), as basic
auth, or as a Bearer header (serve's Bearer key: tests/test_serve.py::test_auth_and_upload_limit).
"""
from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys

import aiohttp
import pytest

from browser import Browser, need_chromium
from rollout_helpers import REPO
from synth_qwen.access import VIEW_COOKIE, reachable_from_others
from view_helpers import ViewServer, play

KEY = "sk-view-Secret123"
MODULE_ENV = ("SERVE_", "VIEW_", "CRAFTER_")


def start_on_a_closed_port(tmp_path, module: str, **env) -> subprocess.CompletedProcess:
    """`python -m synth_qwen.MODULE` on 0.0.0.0 at a port that a never-listening socket holds."""
    with socket.socket() as holder:  # no SO_REUSEADDR: the port stays taken; no listen(): no one gets in
        holder.bind(("0.0.0.0", 0))
        environ = {k: v for k, v in os.environ.items() if not k.startswith(MODULE_ENV)}
        environ.update({k.upper(): str(v) for k, v in env.items()}, PYTHONPATH=str(REPO))
        environ[f"{module.upper()}_PORT"] = str(holder.getsockname()[1])
        return subprocess.run([sys.executable, "-m", f"synth_qwen.{module}"], env=environ, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)


def test_loopback_names_need_no_key_and_every_other_address_does():
    assert not any(map(reachable_from_others, ["127.0.0.1", "localhost", "::1", "127.0.0.2"]))
    assert all(map(reachable_from_others, ["0.0.0.0", "", "::", "192.168.1.10"]))
    assert not reachable_from_others("no-such-host.invalid")  # preflight says it does not resolve


@pytest.fixture(scope="module")
def trace_db(tmp_path_factory):
    folder = tmp_path_factory.mktemp("traces")
    play(folder, f"sqlite:///{folder / 'traces.db'}", "rand", "builtin:random", 2, 3)
    return folder / "traces.db"


@pytest.mark.parametrize("module", ["serve", "view"])
def test_an_open_host_without_a_key_needs_the_opt_in_and_is_then_warned_at_every_start(tmp_path, trace_db, module):
    prefix, what = module.upper(), {"serve": "upload files, start training jobs and chat with every model",
                                    "view": "read every trace, prompts included"}[module]
    base = {f"{prefix}_HOST": "0.0.0.0", f"{prefix}_DATA_DIR" if module == "serve" else "CRAFTER_DB_URL":
            tmp_path / "data" if module == "serve" else f"sqlite:///{trace_db}"}
    refused = start_on_a_closed_port(tmp_path, module, **base)
    assert refused.returncode == 2 and refused.stderr == (
        f"error: {prefix}_HOST='0.0.0.0' is reachable from other machines and {prefix}_API_KEY is not set: set "
        f"{prefix}_API_KEY (clients send it as their key), listen on 127.0.0.1, or set {prefix}_ALLOW_NO_AUTH=true "
        f"to let anyone who reaches it {what}\n")
    assert not (tmp_path / "data").exists()  # before any work
    warning = (f"warning: {prefix}_HOST=0.0.0.0 with no {prefix}_API_KEY ({prefix}_ALLOW_NO_AUTH=true): anyone who "
               f"can reach this port can {what}")
    for _ in range(2 if module == "serve" else 1):  # every start, not once (view starts slowly: once)
        opened = start_on_a_closed_port(tmp_path, module, **base, **{f"{prefix}_ALLOW_NO_AUTH": "true"})
        assert opened.stderr.splitlines()[0] == warning
        assert opened.returncode == 2 and "cannot listen on 0.0.0.0:" in opened.stderr  # it went on to bind
    keyed = start_on_a_closed_port(tmp_path, module, **base, **{f"{prefix}_API_KEY": KEY})
    assert keyed.returncode == 2 and keyed.stderr.startswith("error: cannot listen on 0.0.0.0:")  # no warning
    assert KEY not in keyed.stdout + keyed.stderr


def get(url: str, jar: aiohttp.CookieJar | None = None, headers: dict | None = None):
    """(status, headers, text) of one GET that does not follow redirects."""
    async def fetch():
        async with aiohttp.ClientSession(cookie_jar=jar or aiohttp.DummyCookieJar()) as session:
            async with session.get(url, headers=headers or {}, allow_redirects=False) as response:
                return response.status, response.headers, await response.text()
    return asyncio.run(fetch())


def test_view_with_a_key_takes_it_once_from_the_address_then_from_its_cookie(tmp_path, trace_db):
    with ViewServer(f"sqlite:///{trace_db}", tmp_path / "view.log", view_api_key=KEY) as view:
        status, headers, text = get(view.url + "/run/rand")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ") and "?key=" in text
        assert get(view.url + "/run/rand?key=wrong")[0] == 401

        async def with_cookie():  # aiohttp keeps cookies from an IP address only when told it may
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
                async with session.get(view.url + f"/run/rand?per=2&key={KEY}", allow_redirects=False) as first:
                    cookie = first.cookies[VIEW_COOKIE]
                    redirect = (first.status, first.headers["Location"])
                async with session.get(view.url + "/") as later:
                    return redirect, cookie, later.status, await later.text()
        redirect, cookie, status, page = asyncio.run(with_cookie())
        assert redirect == (303, "/run/rand?per=2")  # the key leaves the address bar and the history
        assert cookie["httponly"] and cookie.value and KEY not in cookie.value
        assert status == 200 and "rand" in page

        basic = base64.b64encode(f"anyone:{KEY}".encode()).decode()
        assert get(view.url + "/", headers={"Authorization": f"Basic {basic}"})[0] == 200
        assert get(view.url + "/", headers={"Authorization": f"Bearer {KEY}"})[0] == 200
        assert get(view.url + "/", headers={"Authorization": "Bearer nope"})[0] == 401
    log = (tmp_path / "view.log").read_text()
    assert "key required" in log and KEY not in log


def test_a_browser_opens_a_keyed_view_from_one_link(tmp_path, trace_db):
    need_chromium()
    with ViewServer(f"sqlite:///{trace_db}", tmp_path / "view.log", view_api_key=KEY) as view:
        async def steps():
            async with Browser() as browser:
                await browser.goto(f"{view.url}/?key={KEY}")
                landed = await browser.eval("location.pathname + location.search")
                runs = await browser.eval("document.querySelectorAll('tr.run').length")
                await browser.goto(f"{view.url}/run/rand")  # no key in this address: the cookie carries it
                return landed, runs, await browser.eval("document.querySelectorAll('tr.episode-row').length")
        assert asyncio.run(steps()) == ("/", 1, 2)
