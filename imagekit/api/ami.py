"""ami: retention of a spec's AMIs (`imagekit gc`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from imagekit.ami.gc import GcResult, Protected, record_json, record_key, run_gc
from imagekit.errors import UsageError
from imagekit.events import Event, Reporter, silent
from imagekit.paths import log_dir, work_dir
from imagekit.runners.aws import Aws

if TYPE_CHECKING:
    from imagekit.ami.rehearsal import Rehearsal
from imagekit.spec import LoadedSpec


def protected_amis(loaded: LoadedSpec, image: str | None) -> Protected:
    """AMIs gc must keep according to the signed store: channel assignments and each image's newest verified AMI."""
    from imagekit.errors import SignatureError
    from imagekit.manifest.ledger import open_ledger, spec_store

    # trust is required: without it channel logs cannot be read, and gc could remove an AMI a channel points at;
    # a store with no manifests at all has nothing to protect
    try:
        ledger = open_ledger(loaded)
    except SignatureError:
        if not spec_store(loaded).manifest_keys(image):
            return Protected()
        raise
    channel: dict[str, str] = {}
    verified: dict[str, str] = {}
    newest: dict[str, tuple[str, dict[str, str]]] = {}
    for e in ledger.entries(image):
        b = e.build
        if b is None or b.target != "ami":
            continue
        for ch in e.channels:
            for ami in b.amis.values():
                channel[ami] = f"{b.image}@{ch}"
        if b.passed and not e.revoked:
            newest[b.image] = (b.id, b.amis)  # entries come oldest first
    for mid, amis in newest.values():
        for ami in amis.values():
            verified[ami] = mid
    return Protected(channel=channel, verified=verified)


@contextlib.contextmanager
def _aws(loaded: LoadedSpec, rehearse: bool) -> Iterator[tuple[Aws, Rehearsal | None]]:
    if not rehearse:
        yield Aws(), None
        return
    from imagekit.ami.rehearsal import rehearsal
    from imagekit.extras import require

    require("rehearsal", "--rehearse")
    log = log_dir() / "ami" / f"{loaded.spec.name}-gc-rehearsal.log"
    with rehearsal(work_dir(loaded.root) / "rehearsal", loaded.spec.aws.region, log, loaded.spec.aws.ami_regions) as r:
        yield r.aws, r


def gc(
    path: Path | str | None,
    *,
    keep: int | None = None,
    image: str | None = None,
    dry_run: bool = False,
    rehearse: bool = False,
    reporter: Reporter = silent,
) -> GcResult:
    """Deregister a spec's old AMIs (and delete their snapshots) in every region; record what was removed."""
    from imagekit.api.spec import validate
    from imagekit.manifest.ledger import spec_store

    loaded = validate(path)
    if image is not None and image not in loaded.spec.images:
        raise UsageError(f"unknown image {image!r}; images: {', '.join(loaded.spec.images)}")
    if keep is None:
        keep = (loaded.spec.images[image].keep if image else None) or loaded.spec.retention.keep
    if keep < 1:
        raise UsageError("--keep must be at least 1")
    protected = protected_amis(loaded, image)
    aws_cfg = loaded.spec.aws
    with _aws(loaded, rehearse) as (aws, reh):
        result = run_gc(
            aws,
            loaded.spec.name,
            {aws_cfg.region, *aws_cfg.ami_regions},
            keep=keep,
            protected=protected,
            primary_region=aws_cfg.region,
            image=image,
            dry_run=dry_run,
            reporter=reporter,
        )
        if reh is not None and not dry_run:
            # a rehearsal AMI is also an image in the Docker engine
            reh.forget([ami for d in result.removed for ami in d.amis.values()])
    result.rehearsal = rehearse
    if not dry_run and result.removed:
        store = spec_store(loaded)
        key = record_key()
        store.backend.create(key, record_json(result))
        result.record = store.backend.location(key)
        reporter(Event("done", f"removed {len(result.removed)} AMI build(s); record {result.record}"))
    return result
