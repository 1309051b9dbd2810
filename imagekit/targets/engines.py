"""The image engines of the docker target, peers behind one protocol: a Docker Engine (BuildKit) or buildah.

The docker target, the bootstrap and the size gate call only what `ImageEngine` lists; which engine a build uses
is `build.engine` in the spec or `--engine` (docker by default). Verification picks its container runtime by the
same name (verify/runtime.py: docker or podman).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from imagekit.errors import UsageError

if TYPE_CHECKING:
    from imagekit.nightly.budget import SizeSource
    from imagekit.runners.docker import ImageInfo
    from imagekit.runners.process import Result

ENGINES = ("docker", "buildah")
# the container runtime the verify host boots each engine's images on (the same image store)
VERIFY_RUNTIME = {"docker": "docker", "buildah": "podman"}
# where skopeo reads each engine's local images (a compressed push copies from there)
SKOPEO_SOURCE = {"docker": "docker-daemon:", "buildah": "containers-storage:"}


class ImageEngine(Protocol):
    """What the docker target needs from an image engine (runners/docker.DockerEngine, runners/buildah)."""

    kind: str

    def parse_step(self, line: str) -> object | None: ...
    def is_error_line(self, line: str) -> bool: ...
    def inspect(self, ref: str) -> ImageInfo | None: ...
    def resolve(self, ref: str, *, pull: bool = True, renew: bool = False) -> ImageInfo: ...
    def import_tarball(self, tarball: Path, repository: str, tag: str, changes: Sequence[str] = ()) -> str: ...
    def repo_tags(self, repository: str) -> list[str]: ...
    def tag(self, source: str, repository: str, tag: str) -> None: ...
    def remove_image(self, ref: str) -> None: ...
    def version(self) -> str: ...
    def push(self, repository: str, tag: str, *, on_line: Callable[[str], None] | None = None) -> str: ...
    def registry_digest(self, ref: str) -> str: ...
    def sizes(self) -> SizeSource: ...
    def build(
        self,
        context: Path,
        *,
        dockerfile: Path,
        target: str,
        tags: Sequence[str],
        build_args: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        secrets: Mapping[str, Path] | None = None,
        iidfile: Path | None = None,
        log: IO[str] | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> Result: ...


def check_engine(name: str) -> str:
    """The engine name, or UsageError naming the choices."""
    if name not in ENGINES:
        raise UsageError(f"--engine must be {' or '.join(ENGINES)}, not {name!r}")
    return name


def open_engine(name: str) -> Any:
    """A new engine of this kind (the docker SDK client is made on first use)."""
    if check_engine(name) == "buildah":
        from imagekit.runners.buildah import BuildahEngine

        return BuildahEngine()
    from imagekit.runners.docker import DockerEngine

    return DockerEngine()
