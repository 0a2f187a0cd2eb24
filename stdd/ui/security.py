"""Who may look and who may act in the web interface.

Design note: the interface has no users of its own; acting needs the endpoint's token, once.
`/ui/login` takes the token (a form field, compared in constant time) and answers with a session
cookie — random, HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it),
Path=/ui — that lives 12 hours in the daemon's memory (a restart logs everyone out, which is
fine for an observatory's few operators). Every form carries the session's CSRF token as a hidden
field (`csrf`), and every POST under /ui/ needs both: no session → 401, a missing or wrong CSRF
token → 403. Pages are read-only and open to local peers while `http.open_reads` is true, like
the JSON API's GETs; otherwise they need a session too. The Host header check that stops DNS
rebinding is the endpoint's (stdd.http.hostcheck), for the API and the pages alike.
"""
from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from ..http import auth

COOKIE = "stdd_session"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 64


@dataclass
class Session:
    sid: str
    who: str = "operator"  # the name given at login: recorded with what this session does (vetting marks)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    created: float = field(default_factory=time.time)

    def expired(self, now: float | None = None) -> bool:
        return (now or time.time()) - self.created > SESSION_SECONDS


class Sessions:
    """Logged-in sessions, in memory (never written anywhere)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def new(self, who: str = "operator") -> Session:
        s = Session(secrets.token_urlsafe(32), who=(who.strip()[:64] or "operator"))
        with self._lock:
            now = time.time()
            for sid in [k for k, v in self._by_id.items() if v.expired(now)]:
                del self._by_id[sid]
            if len(self._by_id) >= MAX_SESSIONS:  # the oldest goes
                oldest = min(self._by_id.values(), key=lambda v: v.created)
                del self._by_id[oldest.sid]
            self._by_id[s.sid] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._by_id.get(sid)
            if s is not None and s.expired():
                del self._by_id[sid]
                return None
            return s

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


KEY_SESSIONS = web.AppKey("ui_sessions", Sessions)


def session_of(request: web.Request) -> Session | None:
    return request.app[KEY_SESSIONS].get(request.cookies.get(COOKIE))


def local_peer(request: web.Request) -> bool:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, (tuple, list)) and peer:
        return auth.is_loopback(str(peer[0]))
    return True  # a unix socket (mode 600): only local users


def may_read(request: web.Request, open_reads: bool) -> bool:
    return (open_reads and local_peer(request)) or session_of(request) is not None


def check_action(request: web.Request, form: dict) -> Session:
    """The session of a POST under /ui/, its CSRF token checked; raises 401 / 403 otherwise."""
    s = session_of(request)
    if s is None:
        raise web.HTTPUnauthorized(text="log in first (/ui/login): acting needs the endpoint's token",
                                   content_type="text/plain")
    sent = str(form.get("csrf") or request.headers.get("X-CSRF-Token") or "")
    if not sent or not hmac.compare_digest(sent.encode(), s.csrf.encode()):
        raise web.HTTPForbidden(text="missing or wrong CSRF token (reload the page and try again)",
                                content_type="text/plain")
    return s


def set_cookie(response: web.StreamResponse, s: Session) -> None:
    response.set_cookie(COOKIE, s.sid, max_age=SESSION_SECONDS, path="/ui", httponly=True, samesite="Strict")


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/ui")


def token_ok(sent: str, token: str) -> bool:
    return auth.token_matches(sent.strip(), token)


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path under /ui/ only (never another site)."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"
