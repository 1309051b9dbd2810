#!/usr/bin/env python3
"""Make the golden smoke output: run the real service from a built image once and save its answer.

  .venv/bin/python examples/tts/scripts/make_reference.py IMAGE_REF [-f examples/tts/imagekit-cpu.yaml]

It starts IMAGE_REF's own command in a container (port published on 127.0.0.1), waits for the spec's health
path, sends the spec's smoke request and writes the WAV body to the spec's `expect.reference`
(reference/smoke.wav). The output is deterministic (fixed weights, no randomness, one thread), so rerunning it
on the same image gives the same bytes; verify compares later builds with it within `expect.tolerance`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from imagekit.fsutil import atomic_write
from imagekit.spec import load_spec
from imagekit.verify.docker_host import DockerHost, client_from_env, smoke, wait_ready

DEFAULT_SPEC = Path(__file__).resolve().parent.parent / "imagekit-cpu.yaml"


def main(argv: list[str] | None = None) -> int:
    """Run the service once and write the reference WAV."""
    ap = argparse.ArgumentParser(description="write the golden smoke output from a built image")
    ap.add_argument("image_ref")
    ap.add_argument("-f", "--file", type=Path, default=DEFAULT_SPEC)
    ap.add_argument("--image", default=None)
    args = ap.parse_args(argv)
    loaded = load_spec(args.file)
    name = args.image or sorted(loaded.spec.images)[0]
    policy = loaded.verify_for(name)
    port = loaded.resolved(name).port
    if not (policy.health and policy.smoke and policy.smoke.expect.reference and port):
        print("the spec needs verify.health, verify.smoke with expect.reference, and a port", file=sys.stderr)
        return 2
    host = DockerHost(client_from_env())
    with host.service(args.image_ref, port, gpu=False) as svc:
        health = wait_ready(svc, policy.health.path, policy.health.timeout)
        if not health.ready:
            print(f"not ready: {health.last_status} {health.last_body}", file=sys.stderr)
            return 1
        sm = policy.smoke
        result, body = smoke(svc, sm.method, sm.path, sm.json_, sm.headers)
    if result.status != sm.expect.status or not body:
        print(f"smoke failed: {result.status} {body[:200]!r} {result.error}", file=sys.stderr)
        return 1
    out = loaded.local(sm.expect.reference)
    atomic_write(out, body)
    print(f"{out} {len(body)} bytes sha256={hashlib.sha256(body).hexdigest()} ({args.image_ref})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
