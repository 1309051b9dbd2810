"""Pushing the docker target's final image: through the engine (gzip, as `docker push`) or skopeo (a chosen
compression). Either way the subject recorded is the digest the registry stored, never one recomputed here."""

from __future__ import annotations

import os
from typing import IO, TYPE_CHECKING

from imagekit.events import Event, Reporter

if TYPE_CHECKING:
    from imagekit.runners.docker import DockerEngine
    from imagekit.targets.base import BuildOptions


def _dest(final: str, dest: str) -> tuple[str, str]:
    """REGISTRY/REPO[:TAG] -> (repo, tag); the tag defaults to the final image's."""
    _repo, _, tag = final.rpartition(":")
    last = dest.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = dest.rsplit(":", 1)
        return repo, tag
    return dest, tag


def push_compressed(
    final: str, dest: str, options: BuildOptions, *, image: str, reporter: Reporter, log: IO[str]
) -> tuple[str, str]:
    """The image from the engine to the registry through skopeo, its layers compressed as asked; the digest
    recorded is the one the registry stored (skopeo's --digestfile), which differs from a `docker push`'s."""
    from imagekit.runners import skopeo

    dest_repo, dest_tag = _dest(final, dest)
    fmt = options.compression or "gzip"
    # zstd layers have media types only OCI manifests name; gzip keeps Docker's manifest, as `docker push` writes
    flags = ["--format", "v2s2" if fmt == "gzip" else "oci", "--dest-compress-format", fmt]
    if options.compression_level is not None:
        flags += ["--dest-compress-level", str(options.compression_level)]
    if os.environ.get("DOCKER_HOST"):
        flags += ["--src-daemon-host", os.environ["DOCKER_HOST"]]
    reporter(Event("start", f"push {dest_repo}:{dest_tag} ({fmt}, skopeo)", image, "", "docker"))
    digest = skopeo.copy(f"docker-daemon:{final}", f"docker://{dest_repo}:{dest_tag}", extra=flags, log=log)
    reporter(Event("done", f"pushed {dest_repo}@{digest} ({fmt})", image, "", "docker"))
    return digest, f"{dest_repo}@{digest}"


def push(
    engine: DockerEngine, final: str, dest: str, *, image: str, reporter: Reporter, log: IO[str]
) -> tuple[str, str]:
    """Push through the engine (`docker push`, gzip); the digest recorded is the one the registry answered."""
    dest_repo, dest_tag = _dest(final, dest)
    reporter(Event("start", f"push {dest_repo}:{dest_tag}", image, "", "docker"))
    engine.tag(final, dest_repo, dest_tag)

    def on_line(line: str) -> None:
        log.write(f"push: {line}\n")

    digest = engine.push(dest_repo, dest_tag, on_line=on_line)
    reporter(Event("done", f"pushed {dest_repo}@{digest}", image, "", "docker"))
    return digest, f"{dest_repo}@{digest}"
