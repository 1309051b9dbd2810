"""Helpers for the manifest tests: a small spec with its own key and trust file, and recorded fake builds."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from imagekit.manifest.keys import keygen
from imagekit.manifest.record import Recorded, record_build
from imagekit.plan import plan_image
from imagekit.spec import LoadedSpec, load_spec

SPEC = """\
version: 1
name: demo
layers:
  base:
    from: {{docker: "debian:bookworm"}}
    apt: [curl]
  runtime:
    parent: base
    python: "3.11"
    env: {{RT: "{rt}"}}
  app:
    parent: runtime
    env: {{APP: "{app}"}}
images:
  app: {{leaf: app}}
  rt: {{leaf: runtime}}
signing: {{key: keys/imagekit.key}}
store: "{store}"
"""


def make_spec(root: Path, *, store: str = "manifests", rt: str = "1", app: str = "1", key: bool = True) -> LoadedSpec:
    """A spec in root with keys/imagekit.{key,pub} and imagekit.trust.yaml trusting that key."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "imagekit.yaml").write_text(SPEC.format(store=store, rt=rt, app=app))
    if key and not (root / "keys" / "imagekit.key").exists():
        keygen(root / "keys")
        (root / "imagekit.trust.yaml").write_text("keys:\n  - pem: keys/imagekit.pub\n")
    return load_spec(root / "imagekit.yaml")


def fake_build(
    loaded: LoadedSpec,
    image: str = "app",
    *,
    seed: str = "1",
    passed: bool = True,
    rehearsal: bool = False,
    report: dict[str, Any] | None = None,
    size: int | None = 1000,
) -> Recorded:
    """Record a build as the docker builder would after verify and push, with a made-up registry digest."""
    layers = plan_image(loaded, image, "docker").layers
    digest = "sha256:" + hashlib.sha256(f"{image}-{seed}".encode()).hexdigest()
    rep = report if report is not None else {"passed": passed, "failures": [] if passed else ["torch 2.4 != 2.5"]}
    return record_build(
        loaded,
        image,
        "docker",
        layers,
        started="2026-11-21T01:00:00Z",
        finished=f"2026-11-21T01:{int(hashlib.md5(seed.encode()).hexdigest()[:4], 16) % 60:02d}:00Z",
        image_ref=f"localhost:5000/demo-{image}@{digest}",
        image_digest=digest,
        base="debian@sha256:" + "ab" * 32,
        report=rep,
        builders={"docker": "20.10.24"},
        rehearsal=rehearsal,
        size_bytes=size,
    )
