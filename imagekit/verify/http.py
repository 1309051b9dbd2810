"""HTTP to the service under test, which is untrusted: no redirects, one host, bounded in size and in total time.

urllib follows a `302 Location: http://169.254.169.254/…` to any host and bounds each socket read, not the
request: an image could make this machine fetch a URL of its choosing (and have the answer signed), or drip one
byte at a time past every timeout. Here the request goes to the service's host and port only, whatever the path
or the answer says; a 3xx is an answer like any other; the whole exchange (headers included) is cut off at its
deadline by closing the socket, and a body over the limit is refused rather than held in memory.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
import urllib.parse

# A readiness answer is a few bytes of JSON; a smoke answer can be audio or an image, compared with a reference.
HEALTH_BODY_LIMIT = 1024 * 1024
SMOKE_BODY_LIMIT = 64 * 1024 * 1024
HEADER_VALUE_LIMIT = 1024


class ServiceHTTPError(OSError):
    """The service's answer was refused: over the size limit, past the deadline, or not HTTP."""


def request(
    base_url: str,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float,
    limit: int,
) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one request to base_url's host and port; ServiceHTTPError or
    OSError when it cannot be had within `timeout` seconds (all of it) and `limit` body bytes."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ServiceHTTPError(f"not a service address: {base_url!r}")
    # the path is sent as the request target, never parsed as a URL: "//host/x" or "@host" cannot move the host
    target = path if path.startswith("/") else "/" + path
    deadline = time.monotonic() + timeout
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=max(0.05, timeout))
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, timeout), cut)
    timer.daemon = True
    timer.start()
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        status = int(resp.status)
        got = {k.lower(): v[:HEADER_VALUE_LIMIT] for k, v in resp.getheaders()}
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = resp.read1(65536)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise ServiceHTTPError(f"the answer is over {limit} bytes; imagekit reads at most that")
            chunks.append(chunk)
        if expired.is_set() or time.monotonic() > deadline:
            raise TimeoutError(f"the answer did not finish within {timeout:g}s")
        return status, got, b"".join(chunks)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if expired.is_set():
            raise TimeoutError(f"the answer did not finish within {timeout:g}s") from None
        if isinstance(exc, OSError):
            raise
        raise ServiceHTTPError(f"not an HTTP answer: {type(exc).__name__}: {exc}") from None
    finally:
        timer.cancel()
        conn.close()
