"""The rehearsal's local EC2: moto's server with two gaps closed.

Run as `python -m imagekit.targets.ami.motoserver -p PORT`.

- moto records every image made by CreateImage/CopyImage as root device type "standard" (instance store), while
  on AWS they are EBS-backed; Packer's amazon-ebs refuses a non-EBS source AMI, so a layer could never be built
  from its parent. Images are made EBS-backed here, as on AWS.
- moto keeps nothing between runs and cannot create an image with a given id; the AMIs of earlier rehearsals are
  seeded from $IMAGEKIT_REHEARSAL_SEED (a JSON list of {region, ami_id, name, creation_date, tags}), each in
  its own region only, owned by moto's account.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import Any


def _patch() -> None:
    from moto.core.utils import utcnow
    from moto.ec2.models import amis

    original = amis.Ami.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("root_device_type", "ebs")
        original(self, *args, **kwargs)

    amis.Ami.__init__ = init  # type: ignore[method-assign]

    seed_path = os.environ.get("IMAGEKIT_REHEARSAL_SEED")
    seeds: list[dict[str, Any]] = []
    if seed_path:
        with open(seed_path, encoding="utf-8") as fh:
            seeds = json.load(fh)
    original_load = amis.AmiBackend._load_amis

    def load(self: Any) -> None:
        original_load(self)
        for seed in seeds:
            if seed.get("region") != self.region_name:
                continue
            created = seed.get("creation_date")
            when = datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%fZ") if created else utcnow()
            self.amis[seed["ami_id"]] = amis.Ami(
                self,
                ami_id=seed["ami_id"],
                name=seed.get("name"),
                architecture="x86_64",
                virtualization_type="hvm",
                root_device_type="ebs",
                region_name=f"{self.region_name}a",
                creation_date=when,
                tags=dict(seed.get("tags") or {}),
            )

    amis.AmiBackend._load_amis = load  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    """Start moto's server (same arguments as `moto_server`) with EBS-backed, seeded images."""
    _patch()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
