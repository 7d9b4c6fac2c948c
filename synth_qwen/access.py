"""Who may use a listening server (`serve`, `view`): one rule for both.

On a loopback address only this machine can connect, so no key is needed. On any other address a key
is required (SERVE_API_KEY, VIEW_API_KEY) unless the user opts out on purpose (SERVE_ALLOW_NO_AUTH,
VIEW_ALLOW_NO_AUTH), and then every start says so. With a key set, every request must carry it:
`Authorization: Bearer KEY` (what the openai SDK sends as its api_key). A browser (view) may also send
it as HTTP basic auth (any user name, the key as password: the browser asks for it), or once as
`?key=KEY`, which sets a cookie and redirects to the same page without the key in its address.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import socket
import sys
from dataclasses import dataclass

from aiohttp import web

from synth_qwen.settings import SettingsError, exit_usage

VIEW_COOKIE = "synth_qwen_view"


@dataclass(frozen=True)
class Door:
    """A server's variables, and what an open one lets anybody do (said in the refusal and the warning)."""
    host_var: str
    key_var: str
    allow_var: str
    exposes: str


SERVE = Door("SERVE_HOST", "SERVE_API_KEY", "SERVE_ALLOW_NO_AUTH",
             "upload files, start training jobs and chat with every model")
VIEW = Door("VIEW_HOST", "VIEW_API_KEY", "VIEW_ALLOW_NO_AUTH", "read every trace, prompts included")


def reachable_from_others(host: str) -> bool:
    """`host` (an empty one or 0.0.0.0 is every interface) resolves to an address that is not loopback.
    A name that does not resolve is not: preflight.listenable says so in its own words."""
    if not host:
        return True
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError):
        return False
    return not all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


def exposure(door: Door, host: str, key: str | None, allow_no_auth: bool) -> str | None:
    """None when nobody else can get in without the key; a warning line when the user opened the door
    on purpose; SettingsError when the host is reachable from other machines and no key is set."""
    if key or not reachable_from_others(host):
        return None
    if not allow_no_auth:
        raise SettingsError(f"{door.host_var}={host!r} is reachable from other machines and {door.key_var} is not "
                            f"set: set {door.key_var} (clients send it as their key), listen on 127.0.0.1, or set "
                            f"{door.allow_var}=true to let anyone who reaches it {door.exposes}")
    return (f"warning: {door.host_var}={host} with no {door.key_var} ({door.allow_var}=true): anyone who can "
            f"reach this port can {door.exposes}")


def exposure_or_exit(door: Door, host: str, key: str | None, allow_no_auth: bool) -> None:
    """`exposure` for a server's main(): the refusal is one line and exit 2; the warning goes to stderr."""
    try:
        warning = exposure(door, host, key, allow_no_auth)
    except SettingsError as error:
        exit_usage(str(error))
    if warning:
        print(warning, file=sys.stderr, flush=True)


def same(given: str, key: str) -> bool:
    return hmac.compare_digest(given.encode(), key.encode())  # constant time: no guessing byte by byte


def presented_key(request: web.Request) -> str | None:
    """The key in `Authorization: Bearer KEY`, or the password of `Authorization: Basic …`."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


def has_key(request: web.Request, key: str) -> bool:
    given = presented_key(request)
    return given is not None and same(given, key)


def view_middlewares(key: str | None) -> list:
    """The trace browser's gate: none without a key; with one, a request needs the key (header) or the
    cookie that `?key=KEY` set. The cookie holds a digest of the key, not the key."""
    if not key:
        return []
    session = hmac.new(key.encode(), b"synth_qwen view session", "sha256").hexdigest()

    @web.middleware
    async def require_key(request: web.Request, handler):
        given = request.query.get("key")
        if given is not None and same(given, key):
            response = web.HTTPSeeOther(request.rel_url.without_query_params("key"))
            response.set_cookie(VIEW_COOKIE, session, httponly=True, samesite="Lax")
            return response
        if has_key(request, key) or same(request.cookies.get(VIEW_COOKIE, ""), session):
            return await handler(request)
        return web.Response(status=401, text="This trace browser needs its key (VIEW_API_KEY): open this address "
                                             "once with ?key=KEY added (a cookie keeps it), or sign in with any "
                                             "user name and the key as password.\n",
                            headers={"WWW-Authenticate": 'Basic realm="synth_qwen view", charset="UTF-8"'})

    return [require_key]
