"""verify: boot an image on the Docker host (or judge a saved probe), compare with the pins and the GPU policy,
check health and smoke, report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagekit.errors import SpecError
from imagekit.events import Reporter, silent
from imagekit.spec import load_spec
from imagekit.verify import docker_host, probe_file
from imagekit.verify.docker_host import VerifyResult


def verify_docker(
    path: Path | str | None,
    image_ref: str,
    image: str | None = None,
    reporter: Reporter = silent,
    *,
    client: Any = None,
    gpu: str | None = None,
    engine: str | None = None,
) -> VerifyResult:
    """Boot `image_ref` on the Docker host and verify it against the spec; returns the report and its path.

    `gpu` (required|optional) overrides verify.gpu for this run. Raises VerifyFailed (after writing the report)
    when anything does not match, Interrupted on Ctrl-C. engine (docker|buildah, default the spec's build.engine):
    buildah's images are booted with podman.
    """
    from imagekit.targets.engines import VERIFY_RUNTIME, check_engine

    loaded = load_spec(path)
    runtime = VERIFY_RUNTIME[check_engine(engine or loaded.spec.build.engine)]
    return docker_host.verify_docker(loaded, image_ref, image, reporter, client=client, gpu=gpu, runtime=runtime)


def verify_probe_file(
    path: Path | str | None,
    probe: Path | str,
    image: str | None = None,
    reporter: Reporter = silent,
    *,
    gpu: str | None = None,
) -> VerifyResult:
    """Judge a saved probe JSON against the spec, with no container: exit 0 pass, 1 failed checks, 2 not a probe.

    The spec's pins go through the same compatibility check as `validate` first (exit 2 when it refuses them): a
    probe never makes a spec good that validate would refuse.
    """
    from imagekit.compat.check import check_spec

    loaded = load_spec(path)
    problems = check_spec(loaded)
    if problems:
        raise SpecError(problems)
    return probe_file.verify_probe_file(loaded, probe, image, reporter, gpu=gpu)
