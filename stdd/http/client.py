"""A small synchronous client for the endpoint, used by the CLI (`stdd status`, `stdd submit`, ...).

Design note: the standard library's http.client, because the CLI makes one or two requests and
exits; it speaks TCP or the unix socket named by `http.unix_socket`. The token comes from the
same place the daemon keeps it (env var, else token file) and is sent only on requests that
need it (POSTs, and GETs when reads are not open). A daemon that is not listening is
`DaemonNotRunning`, with the address in the message; an error answer is `ApiError` carrying the
server's message and status.
"""
from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from typing import Any

from ..config.settings import HttpSettings
from . import auth


class DaemonNotRunning(Exception):
    pass


class ApiError(Exception):
    def __init__(self, status: int, message: str, body: Any = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _connect_host(host: str) -> str:
    """Where to connect for a listening address (a wildcard bind means this machine)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


class Client:
    def __init__(self, http: HttpSettings, timeout: float = 15.0):
        self.http = http
        self.timeout = timeout
        self._token: str | None = None

    @property
    def address(self) -> str:
        if self.http.unix_socket:
            return f"unix:{self.http.unix_socket}"
        host = _connect_host(self.http.host)
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.http.port}"

    def token(self) -> str:
        if self._token is None:
            self._token = auth.read_token(self.http)
        return self._token

    def _connection(self) -> http.client.HTTPConnection:
        if self.http.unix_socket:
            return _UnixConnection(str(self.http.unix_socket), self.timeout)
        return http.client.HTTPConnection(_connect_host(self.http.host), self.http.port, timeout=self.timeout)

    def request(self, method: str, path: str, params: dict | None = None, body: Any = None,
                *, send_token: bool | None = None) -> Any:
        """The decoded JSON answer (text for non-JSON); ApiError for status >= 400."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Accept": "application/json"}
        token_error: auth.TokenError | None = None
        if send_token if send_token is not None else (method != "GET" or not self.http.open_reads):
            try:
                headers["Authorization"] = f"Bearer {self.token()}"
            except auth.TokenError as e:  # first find out whether a daemon is there at all
                token_error = e
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connection()
        try:
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (ConnectionRefusedError, FileNotFoundError) as e:
                raise DaemonNotRunning(f"daemon is not running at {self.address}") from e
            except socket.timeout as e:
                raise DaemonNotRunning(f"daemon at {self.address} did not answer within {self.timeout:.0f} s") from e
            except OSError as e:
                raise DaemonNotRunning(f"cannot reach the daemon at {self.address}: {e.strerror or e}") from e
        finally:
            conn.close()
        ctype = resp.getheader("Content-Type", "")
        payload: Any = raw.decode("utf-8", errors="replace")
        if "json" in ctype:
            try:
                payload = json.loads(payload)
            except ValueError:
                pass
        if resp.status == 401 and token_error is not None:
            raise token_error
        if resp.status >= 400:
            message = payload.get("error") if isinstance(payload, dict) else None
            raise ApiError(resp.status, message or f"HTTP {resp.status} {resp.reason}", payload)
        return payload

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body)
