"""gc: retention of a spec's built artifacts for one target (`imagekit gc --target docker|ami`)."""

from __future__ import annotations

from pathlib import Path

from imagekit.errors import UsageError
from imagekit.events import Reporter, silent
from imagekit.retention import GcOutcome, gc_for


def gc(
    path: Path | str | None,
    *,
    target: str = "ami",
    keep: int | None = None,
    image: str | None = None,
    dry_run: bool = False,
    rehearse: bool = False,
    engine: str | None = None,
    reporter: Reporter = silent,
) -> GcOutcome:
    """Remove a spec's old builds for one target (channel targets, the newest and what they need are kept).

    engine (docker | buildah, docker target only): where the images are, a Docker Engine or containers-storage
    (default: the spec's build.engine)."""
    from imagekit.targets.engines import check_engine

    if engine is not None:
        check_engine(engine)  # a usage error before the spec is read, as build says it
    from imagekit.api.spec import validate

    loaded = validate(path)
    if image is not None and image not in loaded.spec.images:
        raise UsageError(f"unknown image {image!r}; images: {', '.join(loaded.spec.images)}")
    if keep is not None and keep < 1:
        raise UsageError("--keep must be at least 1")
    return gc_for(loaded, target, keep=keep, image=image, dry_run=dry_run, rehearse=rehearse, engine_kind=engine,
                  reporter=reporter)  # fmt: skip
