"""The Target protocol and what a build call hands every target (the pipeline in imagekit.api.build drives it)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from imagekit.events import Reporter, silent
from imagekit.plan import LayerPlan
from imagekit.targets.results import ImageResult, LayerResult

if TYPE_CHECKING:
    from imagekit.nightly.budget import SizeSource
    from imagekit.release import Release

# key -> a context held around building that layer; it yields True when another build already made the layer
LayerLock = Callable[[str], contextlib.AbstractContextManager[bool]]


@dataclass(frozen=True)
class BuildOptions:
    """What one `build` call asks of its target, whichever it is."""

    force: bool = False
    force_layers: Collection[str] = ()
    push: str | None = None
    rehearse: bool = False
    engine: Any = None  # a DockerEngine (or a test fake) for the docker target
    reporter: Reporter = field(default=silent)
    # the time that picks a refreshed root layer's base period (nightly passes its clock; default: now)
    now: datetime | None = None
    # layer hashes whose image or AMI must not be reused: revoked and not rebuilt since (built without any cache)
    no_reuse: frozenset[str] = frozenset()
    gpu: str | None = None  # --gpu: overrides verify.gpu for this call's verification (docker target)
    release: Release | None = None  # --tag: release tags and the git facts for the OCI labels (docker target)
    # --compression or push.compression: push through skopeo with this layer compression (None: docker push)
    compression: str | None = None
    compression_level: int | None = None


class Target(Protocol):
    """One target, opened for one build call: prepare an image, look up reusable layers, build a layer, finish the
    artifact, and boot it on the target's verify host. Verify, size gate and record are the pipeline's."""

    name: str
    builders: dict[str, str]  # tool versions for the record (docker engine, packer)
    layer_builds: int  # layers built by this call (each a `docker build --target` or a `packer build`)

    def prepare(self, image: str, res: ImageResult) -> contextlib.AbstractContextManager[None]:
        """Everything an image needs before its first layer (logs, base, rendered files); held while it builds."""
        ...

    def reuse(self, image: str, layer: str, digest: str) -> LayerResult | None:
        """The artifact already built for this layer hash (status "reused"), or None: the plan's reuse lookup."""
        ...

    def build_layer(self, image: str, lp: LayerPlan, done: list[LayerResult], *, force: bool) -> LayerResult:
        """Build one stale layer on top of the layers done so far (root first); force skips any build cache."""
        ...

    def finish(self, image: str, res: ImageResult) -> None:
        """Finish the artifact from its leaf layer (final tags, push, region copies); fills ref, tags, size."""
        ...

    def verify(self, image: str, res: ImageResult) -> str:
        """Boot the artifact on this target's verify host; the report's path. Raises VerifyFailed (report written)."""
        ...

    def record_facts(self, res: ImageResult) -> dict[str, Any]:
        """What the signed record says about the artifact (record_build's keyword arguments)."""
        ...

    def sizes(self) -> SizeSource:
        """The size gate's view of this target's artifacts (refs are LayerResult.tag values)."""
        ...

    def layer_ref(self, layer: str, digest: str) -> str | None:
        """The artifact ref of an earlier build's layer (the gate's previous sizes), or None when it is gone."""
        ...
