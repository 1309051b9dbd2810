"""The size gate's view of AMIs: a rehearsal AMI's size is its image in the Docker engine; on AWS, its snapshots."""

from __future__ import annotations

from typing import Any

from imagekit.runners.aws import Aws
from imagekit.runners.docker import DockerEngine, EngineSizes
from imagekit.targets.ami.rehearsal import ami_image


class AmiSizes:
    """SizeSource over `region:ami-id` refs (what an AMI LayerResult's tag reads)."""

    def __init__(self, aws: Aws, *, rehearsal: bool, engine: DockerEngine | None = None) -> None:
        self.aws = aws
        self.rehearsal = rehearsal
        self._engine = engine

    def _docker(self) -> EngineSizes:
        if self._engine is None:
            self._engine = DockerEngine()
        return EngineSizes(self._engine)

    def size(self, ref: str) -> int | None:
        """Bytes of the AMI (None when it is gone)."""
        region, _, ami_id = ref.partition(":")
        if self.rehearsal:
            return self._docker().size(ami_image(ami_id))
        return self.aws.image_bytes(region, ami_id)

    def history(self, ref: str) -> list[dict[str, Any]]:
        """A rehearsal AMI's build steps (its image's history); AWS keeps none."""
        if not self.rehearsal:
            return []
        return self._docker().history(ami_image(ref.partition(":")[2]))
