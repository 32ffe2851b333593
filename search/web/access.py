"""Who may see the search page: a key per server start, like Jupyter's token, and where the page may listen.

`search app` makes the key, hands it to the Streamlit process in its environment (never on its
command line, which every local user can read with `ps`) and prints the link that carries it.
Under a plain `streamlit run`, the page makes the key itself on the first visit and writes the
link to the terminal. No Streamlit import here: the launcher uses this module too.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import sys
import threading
from urllib.parse import urlencode

TOKEN_ENV = "SEARCH_APP_TOKEN"
TOKEN_PARAM = "token"
NO_TOKEN_FLAG = "--no-token"
_making = threading.Lock()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison, so the key cannot be guessed one character at a time."""
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def server_token(address: str | None, port: int, base_path: str = "") -> str:
    """This server process's key: the one `search app` handed over, else one made now and announced.

    Kept in the process environment rather than a module variable: Streamlit may reload this
    package's modules while it runs (its file watcher), and the key must not change under a
    link already given out.
    """
    with _making:
        token = os.environ.get(TOKEN_ENV)
        if not token:
            token = os.environ[TOKEN_ENV] = new_token()
            print(f"The search page's link (its key is new at every start; keep it to yourself): "
                  f"{page_url(address, port, token, base_path)}", file=sys.stderr, flush=True)
    return token


def page_url(address: str | None, port: int, token: str | None = None, base_path: str = "") -> str:
    """The link to open in a browser on this machine."""
    host = "127.0.0.1" if address in (None, "", "0.0.0.0", "::") else address
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    base = "/" + base_path.strip("/") if base_path.strip("/") else ""
    return f"http://{host}:{port}{base}/" + (f"?{urlencode({TOKEN_PARAM: token})}" if token else "")


def is_loopback(address: str | None) -> bool:
    """Whether a server bound to ``address`` can be reached from this machine only ('' binds every address)."""
    if not address:
        return False
    try:
        found = socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(found) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in found)
