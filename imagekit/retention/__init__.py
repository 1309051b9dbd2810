"""Retention per target under one name: docker untags old builds' images, ami deregisters old AMIs.

Both keep what a channel points at and what the newest builds need; manifests are never deleted. One table lists
each target's gc, so `imagekit gc --target` and nightly call it without knowing which target it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from imagekit.events import Reporter, silent
from imagekit.spec import LoadedSpec


class GcOutcome(Protocol):
    """What a target's gc returns: JSON for reports, lines for the terminal."""

    record: str

    def to_json(self) -> dict[str, Any]: ...

    def rows(self) -> list[dict[str, Any]]: ...

    def lines(self) -> list[str]: ...


def _docker(
    loaded: LoadedSpec, *, keep: int | None, image: str | None, dry_run: bool, rehearse: bool, engine: Any,
    engine_kind: str | None, reporter: Reporter,
) -> GcOutcome:  # fmt: skip
    from imagekit.retention.docker import gc_spec

    del rehearse  # docker images live in the engine, rehearsal or not
    return gc_spec(loaded, keep=keep, image=image, dry_run=dry_run, engine=engine, engine_kind=engine_kind,
                   reporter=reporter)  # fmt: skip


def _ami(
    loaded: LoadedSpec, *, keep: int | None, image: str | None, dry_run: bool, rehearse: bool, engine: Any,
    engine_kind: str | None, reporter: Reporter,
) -> GcOutcome:  # fmt: skip
    from imagekit.retention.ami import gc_spec

    del engine, engine_kind  # AMIs live in EC2 (a rehearsal's also in the engine, which the rehearsal finds itself)
    n = keep or (loaded.spec.images[image].keep if image else None) or loaded.spec.retention.keep
    return gc_spec(loaded, keep=n, image=image, dry_run=dry_run, rehearse=rehearse, reporter=reporter)


GcFn = Callable[..., GcOutcome]
RETENTION: dict[str, GcFn] = {"docker": _docker, "ami": _ami}


def gc_for(
    loaded: LoadedSpec,
    target: str,
    *,
    keep: int | None = None,
    image: str | None = None,
    dry_run: bool = False,
    rehearse: bool = False,
    engine: Any = None,
    engine_kind: str | None = None,
    reporter: Reporter = silent,
) -> GcOutcome:
    """Run one target's retention over a spec (one image, or all); engine_kind (docker | buildah) picks where the
    docker target's images are (default: the spec's build.engine)."""
    from imagekit.errors import UsageError
    from imagekit.targets import target_info
    from imagekit.targets.engines import check_engine

    info = target_info(target)  # the same UsageError for an unknown name as `build`
    if engine_kind is not None:
        check_engine(engine_kind)
        if info.engine:
            raise UsageError(info.engine)
    if rehearse and info.rehearse:
        raise UsageError(info.rehearse)
    if rehearse:
        from imagekit.extras import require

        # before the store is read, as build and nightly do: a missing extra is the first thing to say
        require("rehearsal", "--rehearse")
    return RETENTION[target](
        loaded,
        keep=keep,
        image=image,
        dry_run=dry_run,
        rehearse=rehearse,
        engine=engine,
        engine_kind=engine_kind,
        reporter=reporter,
    )
