"""verify: boot an image on the Docker host, probe it, compare with the pins, check health and smoke, report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagekit.events import Reporter, silent
from imagekit.spec import load_spec
from imagekit.verify import docker_host
from imagekit.verify.docker_host import VerifyResult


def verify_docker(
    path: Path | str | None,
    image_ref: str,
    image: str | None = None,
    reporter: Reporter = silent,
    *,
    client: Any = None,
) -> VerifyResult:
    """Boot `image_ref` on the Docker host and verify it against the spec; returns the report and its path.

    Raises VerifyFailed (after writing the report) when anything does not match, Interrupted on Ctrl-C.
    """
    return docker_host.verify_docker(load_spec(path), image_ref, image, reporter, client=client)
