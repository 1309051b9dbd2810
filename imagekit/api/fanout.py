"""Fan-out on a CI engine: the stale (image, target) jobs as a matrix (`plan --matrix`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagekit.events import Reporter, silent
from imagekit.nightly.run import FORCING
from imagekit.nightly.staleness import AmiResolver, Clock, DockerResolver, utc_now
from imagekit.plan import ImagePlan


def nightly_plans(
    path: Path | str | None,
    *,
    target: str = "all",
    images: list[str] | None = None,
    rehearse: bool = False,
    reporter: Reporter = silent,
    clock: Clock = utc_now,
    docker_resolver: DockerResolver | None = None,
    ami_resolver: AmiResolver | None = None,
) -> list[ImagePlan]:
    """The plans `imagekit nightly` would act on: the store's verified builds, refresh due and upstream drift."""
    from imagekit.api.spec import check_images, validate
    from imagekit.errors import UsageError
    from imagekit.manifest.ledger import spec_store
    from imagekit.manifest.record import verified_builds
    from imagekit.nightly.run import night_plans

    if target not in ("docker", "ami", "all"):
        raise UsageError(f"--target must be docker, ami or all, not {target!r}")
    loaded = validate(path)
    check_images(loaded, images)
    store = spec_store(loaded)
    builds = verified_builds(loaded, store=store, rehearsal=rehearse)
    return night_plans(
        loaded, store, builds, target=target, clock=clock, reporter=reporter, rehearse=rehearse, images=images,
        docker_resolver=docker_resolver, ami_resolver=ami_resolver,
    )  # fmt: skip


def matrix_of(plans: list[ImagePlan]) -> dict[str, list[dict[str, Any]]]:
    """`{"include": [{"image", "target", "layers", "force"}]}` for every plan with a stale layer.

    `layers` (the stale ones) and `force` (those a refresh or upstream drift rebuilds although built) are
    space-separated strings, not lists: Tekton matrix parameters and most CI variables only carry strings.
    """
    include = []
    for p in plans:
        stale = [lp for lp in p.layers if lp.status == "stale"]
        if not stale:
            continue
        forced = [lp.name for lp in stale if lp.reason.startswith(FORCING)]
        include.append(
            {
                "image": p.name,
                "target": p.target,
                "layers": " ".join(lp.name for lp in stale),
                "force": " ".join(forced),
            }
        )
    return {"include": include}


def plan_matrix(
    path: Path | str | None,
    *,
    target: str = "all",
    images: list[str] | None = None,
    rehearse: bool = False,
    reporter: Reporter = silent,
    clock: Clock = utc_now,
    docker_resolver: DockerResolver | None = None,
    ami_resolver: AmiResolver | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The stale (image, target) jobs of a nightly run, in the shape GitHub Actions' `fromJSON` matrix takes."""
    plans = nightly_plans(
        path, target=target, images=images, rehearse=rehearse, reporter=reporter, clock=clock,
        docker_resolver=docker_resolver, ami_resolver=ami_resolver,
    )  # fmt: skip
    return matrix_of(plans)
