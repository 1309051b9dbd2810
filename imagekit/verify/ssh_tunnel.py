"""The ssh tunnel that reaches a service published on an ssh:// engine host's loopback (the docker verify host)."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.parse
from collections.abc import Iterator

from imagekit.errors import ImagekitError
from imagekit.runners.process import Process


def ssh_tunnel_argv(docker_host: str, remote_port: int, local_port: int) -> list[str]:
    """The ssh command forwarding 127.0.0.1:local_port here to 127.0.0.1:remote_port on the ssh:// engine host."""
    parts = urllib.parse.urlsplit(docker_host)
    target = f"{parts.username}@{parts.hostname}" if parts.username else str(parts.hostname)
    argv = ["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes"]
    if parts.port:
        argv += ["-p", str(parts.port)]
    return [*argv, "-L", f"127.0.0.1:{local_port}:127.0.0.1:{remote_port}", target]


@contextlib.contextmanager
def ssh_tunnel(docker_host: str, remote_port: int, wait: float = 20.0) -> Iterator[int]:
    """Forward a local port to the engine host's loopback for as long as the block runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        local_port = int(sock.getsockname()[1])
    proc = Process(ssh_tunnel_argv(docker_host, remote_port, local_port))
    try:
        deadline = time.monotonic() + wait
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local_port), timeout=1):
                break
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise ImagekitError(
                    f"could not open an ssh tunnel to {docker_host} for the service port: {' | '.join(proc.tail)}"
                )
            time.sleep(0.2)
        yield local_port
    finally:
        proc.cancel(grace=2.0)
