"""Build targets: docker and ami as peers behind one protocol; the pipeline in imagekit.api.build drives them.

Like pre-commit's `languages/`, every target offers the same few operations and one table lists them. Like a
Packer builder, a target builds and finishes its artifact; verification, the size gate and the signed record stay
in the pipeline, the same code for every target.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imagekit.errors import UsageError
from imagekit.spec import LoadedSpec
from imagekit.targets.base import BuildOptions, LayerLock, Target

__all__ = ["TARGETS", "BuildOptions", "LayerLock", "Target", "TargetInfo", "target_info"]

Opener = Callable[[LoadedSpec, list[str], BuildOptions], contextlib.AbstractContextManager[Target]]


@dataclass(frozen=True)
class TargetInfo:
    """A target in the table: how to open it, whether its builds may run side by side (nightly --jobs), and the
    build options it takes (what --push and --rehearse say when given to a target without them)."""

    name: str
    open: Opener
    concurrent: bool
    push: str | None = None  # None: --push works; else why not
    rehearse: str | None = None  # None: --rehearse works; else why not
    gpu: str | None = None  # None: --gpu works; else why not
    tag: str | None = None  # None: --tag works (release tags, OCI labels); else why not
    engine: str | None = None  # None: --engine works (docker | buildah); else why not


@contextlib.contextmanager
def _open_docker(loaded: LoadedSpec, images: list[str], options: BuildOptions) -> Iterator[Target]:
    from imagekit.targets.docker import open_docker

    with open_docker(loaded, images, options) as target:
        yield target


@contextlib.contextmanager
def _open_ami(loaded: LoadedSpec, images: list[str], options: BuildOptions) -> Iterator[Target]:
    from imagekit.targets.ami import open_ami

    with open_ami(loaded, images, options) as target:
        yield target


TARGETS: dict[str, TargetInfo] = {
    "docker": TargetInfo(
        "docker",
        _open_docker,
        concurrent=True,
        rehearse="--rehearse applies to --target ami (a local moto EC2 with sshd containers)",
    ),
    # AMI builds share one EC2 (or one rehearsal moto server and its state folder): one after another
    "ami": TargetInfo(
        "ami",
        _open_ami,
        concurrent=False,
        push="--push applies to --target docker (AMIs are copied with aws.ami_regions)",
        gpu="--gpu applies to --target docker; an AMI is verified on verify.instance_type as verify.gpu says",
        tag="--tag applies to --target docker (an AMI is named by its id and its layer-hash tags)",
        engine="--engine applies to --target docker (AMIs are built by packer)",
    ),
}


def target_info(name: str) -> TargetInfo:
    """The table entry of a target; UsageError for an unknown name."""
    try:
        return TARGETS[name]
    except KeyError:
        raise UsageError(f"--target must be {' or '.join(TARGETS)}, not {name!r}") from None
