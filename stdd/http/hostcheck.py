"""The Host header check: the endpoint answers only to its own names (DNS rebinding).

A web page from anywhere can make a browser on the observatory's network send requests to
`127.0.0.1:8754` under a name it controls that resolves there (DNS rebinding); the browser then
treats the answers as that page's own. The Host header is what gives it away: it carries the
attacker's name. Every request over TCP must name the endpoint's configured address
(`http.host`, the port it listens on), a loopback name when it listens on loopback (`localhost`,
`127.0.0.1`, `[::1]`), or one of `http.allowed_hosts`; any other is refused with 421 before any
handler runs. Requests over the unix socket (mode 600, local users only) are not checked.
"""
from __future__ import annotations

import ipaddress

from aiohttp import web

from .responses import error_response

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
KEY_ALLOWED_HOSTS = web.AppKey("allowed_hosts", frozenset)


def allowed_names(host: str, extra: list[str]) -> frozenset[str]:
    """The Host names accepted for an endpoint listening on `host`. Listening on every address
    (0.0.0.0, ::) adds the loopback names and this machine's host names."""
    import socket

    names = {host.strip("[]").lower(), *(h.strip("[]").lower() for h in extra)}
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
        if addr.is_loopback:
            names.update(LOOPBACK_NAMES)
        elif addr.is_unspecified:
            names.update(LOOPBACK_NAMES)
            names.update(n.lower() for n in {socket.gethostname(), socket.getfqdn()} if n)
    except ValueError:
        if host.lower() == "localhost":
            names.update(LOOPBACK_NAMES)
    return frozenset(names)


def split_host(value: str) -> tuple[str, int | None]:
    """('name', port) of a Host header value; IPv6 literals in brackets."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        name, rest = value[1:end], value[end + 1:]
        port = rest[1:] if rest.startswith(":") else None
    else:
        name, _, port = value.partition(":")
        port = port or None
    try:
        return name.lower(), int(port) if port is not None else None
    except ValueError:
        return name.lower(), -1


@web.middleware
async def host_middleware(request: web.Request, handler):
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    if not isinstance(sock, (tuple, list)):  # unix socket
        return await handler(request)
    allowed: frozenset = request.app[KEY_ALLOWED_HOSTS]
    name, port = split_host(request.headers.get("Host", ""))
    if name not in allowed or (port is not None and port != sock[1]):
        return error_response(421, f"this endpoint does not answer to Host {request.headers.get('Host', '')!r} "
                                   f"(add the name to http.allowed_hosts if it is really this machine's)")
    return await handler(request)
