"""What several benchmark files share: the docker CLI, the three-layer spec of the --quick rows, removing what a
row tagged. No side effects on import (run.py imports it at start-up)."""

from __future__ import annotations

import subprocess
from pathlib import Path

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"

TINY = """\
version: 1
name: {name}
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
    cuda: "none"
  runtime:
    parent: base
    run: ["python3 -m venv /opt/venv", "/opt/venv/bin/python -m compileall -q /usr/lib/python3.11 > /dev/null"]
  app:
    parent: runtime
    copy: [{{src: app/, dest: /opt/app}}]
images:
  svc: {{leaf: app, repository: imagekit-bench/{name}}}
"""


def remove_tags(needle: str) -> None:
    """Remove the images a benchmark tagged (names carry `needle`; never anyone else's)."""
    out = subprocess.run(
        [DOCKER, "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True, check=False
    ).stdout.split()
    mine = [ref for ref in out if needle in ref]
    if mine:
        subprocess.run([DOCKER, "rmi", "-f", *mine], capture_output=True, check=False)
