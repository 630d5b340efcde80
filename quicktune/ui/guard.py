"""Who may talk to the dashboard: the holder of this launch's key, through a name the server answers to,
from the dashboard's own pages.

Three checks, made on every request before anything is read (``Gate``):

* **The key.** A secret made at each start (``Gate.secret``, its one home). ``quicktune ui`` prints
  it in its URL (``/?token=...``); the first visit with it gets an ``HttpOnly; SameSite=Strict``
  cookie and is redirected to the bare URL, as notebook servers do. Any request without that cookie
  is refused (403) with how to get in. The page's promotion token is derived from the secret
  (``page_token``): the page never holds the key itself.
* **The Host header** (DNS rebinding: another site's name made to point at this machine). Bound to a
  loopback address, the server answers to loopback names only (``localhost``, ``127.x.x.x``, ``::1``);
  bound to another address, to that address and to this machine's own name (``hostname``); bound to
  every address (``0.0.0.0``, ``::``), to any IP address (an address cannot be rebound: a page
  whose origin is an address is served by that address), ``localhost`` and the machine's name. The
  name given to ``--host``, when it is a name, is accepted too. The port must be this server's.
* **Same origin.** A request a browser marks ``Sec-Fetch-Site: cross-site`` or ``same-site``, or
  whose ``Origin`` is not ``http://`` + its Host, is refused: another page cannot make the dashboard
  work (``GET /api/example`` renders a recipe's data) even where the cookie would be sent.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost"})
EVERY_ADDRESS = frozenset({"", "0.0.0.0", "::"})
TOKEN_PARAM = "token"
HEADER_VALUE_UNSAFE = re.compile(r"[^\x20-\x7e]")  # what may not reach a response header (CR, LF, NUL, non-ASCII)


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    address = ip_literal(host)
    return host.lower() in LOOPBACK_NAMES if address is None else address.is_loopback


def header_value(text: str) -> str:
    """``text`` made safe for a response header: CR, LF and every other character outside printable ASCII
    become ``?`` (a header value cannot carry them; CR/LF would start a header of the sender's choosing)."""
    return HEADER_VALUE_UNSAFE.sub("?", text)


def split_host(header: str) -> tuple[str, int | None] | None:
    """(host name or address, port) of a Host header; None when it is not one."""
    if not header or any(c in header for c in "/\\?#@ ") or HEADER_VALUE_UNSAFE.search(header):
        return None
    try:
        parts = urlsplit(f"//{header}")
        return (parts.hostname or "").lower(), parts.port
    except ValueError:  # a port that is not a number, an unclosed [
        return None


@dataclass
class Gate:
    bound: str  # the address or name the server listens on (--host)
    port: int
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def __post_init__(self) -> None:
        bound = self.bound.strip("[]").lower()
        self.loopback_only = is_loopback(bound)
        self.any_address = bound in EVERY_ADDRESS
        names = set(LOOPBACK_NAMES) if self.loopback_only or self.any_address else set()
        if not self.loopback_only:
            names.add(socket.gethostname().lower())
        if ip_literal(bound) is None and bound not in EVERY_ADDRESS:
            names.add(bound)  # --host given as a name
        self.names = frozenset(names)
        self.address = ip_literal(bound)

    # --- the key ---------------------------------------------------------------------------------

    @property
    def cookie(self) -> str:
        """The cookie's name: one per port, so two dashboards on one machine keep their own key."""
        return f"quicktune-ui-{self.port}"

    def set_cookie(self) -> str:
        return f"{self.cookie}={self.secret}; HttpOnly; SameSite=Strict; Path=/"

    @property
    def page_token(self) -> str:
        """What the page sends with a promotion (``X-Quicktune-Token``): derived from the secret, not the secret."""
        return hmac.new(self.secret.encode("ascii"), b"quicktune-ui promotion", hashlib.sha256).hexdigest()

    def is_key(self, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.secret.encode("ascii"))

    def is_page_token(self, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.page_token.encode("ascii"))

    def signed_in(self, cookie_header: str) -> bool:
        """Whether the request's Cookie header holds this launch's key."""
        for item in cookie_header.split(";"):
            name, _, value = item.strip().partition("=")
            if name == self.cookie and self.is_key(value.strip().strip('"')):
                return True
        return False

    # --- the Host header -------------------------------------------------------------------------

    def host_problem(self, header: str) -> str | None:
        """Why a request with this Host header is refused (None when it is not)."""
        found = split_host(header)
        if found is None:
            return "the request's Host header is missing or not a host name"
        host, port = found
        if (port if port is not None else 80) != self.port:
            return f"the request's Host header names another port than this dashboard's ({self.port})"
        address = ip_literal(host)
        if address is not None:
            allowed = (address.is_loopback if self.loopback_only
                       else self.any_address or address == self.address)
        else:
            allowed = host in self.names
        if allowed:
            return None
        return (f"this dashboard does not answer to the name {host!r} (a web page may have pointed that name at "
                "this machine: DNS rebinding)")

    # --- same origin ---------------------------------------------------------------------------

    @staticmethod
    def cross_site_problem(fetch_site: str | None, origin: str | None, host: str) -> str | None:
        """Why a request another site's page made is refused (None when it is the dashboard's own)."""
        if fetch_site is not None and fetch_site.strip().lower() in ("cross-site", "same-site"):
            return "requests from another site's page are refused"
        if origin is not None and origin.strip().lower() != f"http://{host}".lower():
            return "requests from another origin are refused"
        return None
