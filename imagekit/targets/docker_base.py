"""The docker target's base image: the root layer's `from` made (debootstrap) or resolved (pulled), per build."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING

from imagekit.errors import BuildFailed, Problem, SpecError
from imagekit.events import Event, Reporter
from imagekit.spec import LoadedSpec
from imagekit.targets.results import BaseResult

if TYPE_CHECKING:
    from imagekit.targets.engines import ImageEngine

_BASE_LOCKS: dict[str, threading.Lock] = {}
_BASE_GUARD = threading.Lock()


def _base_lock(key: str) -> threading.Lock:
    with _BASE_GUARD:
        return _BASE_LOCKS.setdefault(key, threading.Lock())


def ensure_docker_base(
    loaded: LoadedSpec,
    image: str,
    root_name: str,
    engine: ImageEngine,
    *,
    renew: bool,
    now: datetime | None,
    reporter: Reporter,
    log: IO[str],
) -> BaseResult:
    """The root layer's base for the docker target: a bootstrap base made (once per refresh period) or a docker
    image resolved (pulled again when renew)."""
    root_layer = loaded.spec.layers[root_name]
    src = root_layer.from_
    key = ("layers", root_name, "from")
    if src is not None and src.bootstrap is not None:
        from imagekit.names import refresh_epoch
        from imagekit.runners.bootstrap import ensure_base

        # --force rebuilds layers, not the distribution base (minutes of debootstrap for the same packages); a
        # layer with a refresh gets a new base once per refresh period (its epoch is part of the base's hash)
        epoch = None
        if root_layer.refresh is not None:
            epoch = refresh_epoch(root_layer.refresh.every_days, now or datetime.now(timezone.utc))
        with _base_lock(f"{root_name}:{epoch}"):  # the images of one run that share the base wait for one
            base = ensure_base(engine, root_name, src.bootstrap, reporter=reporter, log=log, image=image, epoch=epoch)
        return BaseResult("bootstrap", base.tag, base.image_id, base.hash, base.built, round(base.seconds, 1))
    if src is not None and src.docker:
        reporter(Event("step", f"resolving base {src.docker}", image, root_name, "docker"))
        try:
            if renew:
                reporter(Event("step", f"pulling {src.docker} again (refresh or upstream change)", image, root_name,
                               "docker"))  # fmt: skip
            info = engine.resolve(src.docker, renew=renew)
        except BuildFailed as exc:
            raise BuildFailed(
                f"{exc} (with no registry, start from `from: {{bootstrap: ...}}`, or `docker load` the image first)",
                image=image,
                layer=root_name,
                log_path=getattr(log, "name", ""),
            ) from None
        repo = src.docker.split("@", 1)[0].rsplit(":", 1)[0] if "/" in src.docker else src.docker.split(":")[0]
        digest = next((d for d in info.repo_digests if d.split("@", 1)[0] == repo), "")
        if not digest and info.repo_digests:
            digest = info.repo_digests[0]
        # build from the exact image that was resolved (repo@sha256:...), so the record and the build agree; a
        # local-only image has no repo digest, and BuildKit cannot start FROM a bare image id, so its ref is kept
        ref = digest or src.docker
        return BaseResult("docker", ref, info.id, digest.split("@", 1)[1] if "@" in digest else info.id)
    raise SpecError(
        [
            Problem(
                loaded.file,
                loaded.line_of(*key) or loaded.line_of("layers", root_name),
                ".".join(key),
                "the root layer needs from.docker or from.bootstrap for the docker target",
                "add `from: {bootstrap: {distro: debian, suite: bookworm}}` to build with no registry",
            )
        ]
    )
