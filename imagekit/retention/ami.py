"""Retention for the ami target: deregister old AMIs and delete their snapshots in every region, never what is
still needed.

Kept, whatever N says: an AMI a channel points at, the newest verified AMI of each image, and every parent AMI a
kept AMI was built from (tag `imagekit:parent-ami`, followed to the root). A build is identified by its AMI name,
which its region copies share, so a build is kept or removed in all regions at once.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from imagekit.errors import SignatureError
from imagekit.events import Event, Reporter, silent
from imagekit.manifest.ledger import open_ledger, spec_store
from imagekit.paths import log_dir, work_dir
from imagekit.runners.aws import Ami, Aws
from imagekit.spec import LoadedSpec

if TYPE_CHECKING:
    from imagekit.targets.ami.rehearsal import RehearsalEc2


@dataclass(frozen=True)
class Protected:
    """AMI ids that must survive, with why."""

    channel: Mapping[str, str] = field(default_factory=dict)  # ami id -> "image@channel"
    verified: Mapping[str, str] = field(default_factory=dict)  # ami id -> manifest id


@dataclass
class GcDecision:
    """One AMI build (all its region copies) and what gc does with it."""

    name: str
    image: str
    layer: str
    created: str
    amis: dict[str, str]
    snapshots: list[str]
    action: str  # "keep" | "remove"
    reason: str


@dataclass
class GcResult:
    """What gc decided and did."""

    spec: str
    keep: int
    dry_run: bool
    rehearsal: bool = False
    decisions: list[GcDecision] = field(default_factory=list)
    record: str = ""
    image: str | None = None

    def rows(self) -> list[dict[str, Any]]:
        """The report.json row of this run."""
        removed = [d.name for d in self.removed]
        return [{"image": self.image, "target": "ami", "keep": self.keep, "removed": removed, "record": self.record}]

    def lines(self) -> list[str]:
        """What `imagekit gc` prints: one line per AMI build."""
        out = []
        for d in self.decisions:
            amis = ", ".join(f"{r}:{i}" for r, i in d.amis.items())
            verb = ("would remove" if self.dry_run else "removed") if d.action == "remove" else "kept"
            out.append(f"{verb:12} {d.image}/{d.layer} {amis}  ({d.reason})")
        return out

    @property
    def removed(self) -> list[GcDecision]:
        """The builds removed (or, with --dry-run, that would be)."""
        return [d for d in self.decisions if d.action == "remove"]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return asdict(self)


def _builds(amis: Iterable[Ami]) -> dict[str, list[Ami]]:
    by_name: dict[str, list[Ami]] = {}
    for ami in amis:
        by_name.setdefault(ami.name, []).append(ami)
    return by_name


def plan_gc(
    amis: Sequence[Ami],
    *,
    keep: int,
    protected: Protected,
    primary_region: str,
) -> list[GcDecision]:
    """Decide keep/remove for every imagekit AMI build: newest `keep` per image and layer, plus protected ones."""
    builds = _builds(amis)
    id_to_name = {a.id: a.name for a in amis}
    reasons: dict[str, str] = {}
    for name, copies in builds.items():
        for a in copies:
            if a.id in protected.channel:
                reasons.setdefault(name, f"assigned to channel {protected.channel[a.id]}")
            elif a.id in protected.verified:
                reasons.setdefault(name, f"newest verified build ({protected.verified[a.id]})")
    groups: dict[tuple[str, str], list[str]] = {}
    for name, copies in builds.items():
        tags = copies[0].tags
        groups.setdefault((tags.get("imagekit:image", ""), tags.get("imagekit:layer", "")), []).append(name)
    for names in groups.values():
        newest = sorted(names, key=lambda n: (max(a.created for a in builds[n]), n), reverse=True)
        for rank, name in enumerate(newest[:keep]):
            reasons.setdefault(name, f"among the newest {keep} (#{rank + 1})")
    # a kept AMI's parent chain stays: a child built from a removed parent could not be rebuilt the same way
    todo = list(reasons)
    while todo:
        name = todo.pop()
        for a in builds.get(name, []):
            parent = a.tags.get("imagekit:parent-ami", "")
            pname = id_to_name.get(parent)
            if pname and pname not in reasons:
                reasons[pname] = f"parent of kept {a.tags.get('imagekit:layer', '')} AMI {a.id}"
                todo.append(pname)
    decisions = []
    for name, copies in sorted(builds.items(), key=lambda kv: (max(a.created for a in kv[1]), kv[0])):
        tags = next((a.tags for a in copies if a.region == primary_region), copies[0].tags)
        decisions.append(
            GcDecision(
                name=name,
                image=tags.get("imagekit:image", ""),
                layer=tags.get("imagekit:layer", ""),
                created=max(a.created for a in copies),
                amis={a.region: a.id for a in sorted(copies, key=lambda a: a.region)},
                snapshots=sorted(s for a in copies for s in a.snapshots),
                action="keep" if name in reasons else "remove",
                reason=reasons.get(name, f"older than the newest {keep}"),
            )
        )
    return decisions


def collect(aws: Aws, spec: str, regions: Iterable[str], image: str | None = None) -> list[Ami]:
    """Every AMI this spec's builds made (tag imagekit:spec), in every region."""
    tags = {"imagekit:spec": spec}
    if image:
        tags["imagekit:image"] = image
    out: list[Ami] = []
    for region in sorted(set(regions)):
        out.extend(a for a in aws.describe_images(region, tags=tags) if a.state != "deregistered")
    return out


def run_gc(
    aws: Aws,
    spec: str,
    regions: Iterable[str],
    *,
    keep: int,
    protected: Protected,
    primary_region: str,
    image: str | None = None,
    dry_run: bool = False,
    reporter: Reporter = silent,
) -> GcResult:
    """Decide, then deregister and delete snapshots of what is not kept (nothing with dry_run)."""
    amis = collect(aws, spec, regions, image)
    result = GcResult(spec=spec, keep=keep, dry_run=dry_run)
    result.decisions = plan_gc(amis, keep=keep, protected=protected, primary_region=primary_region)
    by_id = {a.id: a for a in amis}
    for d in result.removed:
        verb = "would remove" if dry_run else "removing"
        reporter(
            Event("step", f"{verb} {d.name} ({', '.join(f'{r}:{i}' for r, i in d.amis.items())})", d.image, d.layer)
        )
        if dry_run:
            continue
        for ami_id in d.amis.values():
            aws.deregister(by_id[ami_id])
    return result


def record_json(result: GcResult) -> bytes:
    """The record of a gc run (what was removed, what was kept and why)."""
    doc = {
        "kind": "imagekit-gc",
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        **result.to_json(),
    }
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def record_key() -> str:
    """Store key of a gc record (`_gc/…`: the store's manifest listing skips `_` folders)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"_gc/{stamp}-{uuid.uuid4().hex[:8]}.json"


def protected_amis(loaded: LoadedSpec, image: str | None) -> Protected:
    """AMIs gc must keep according to the signed store: channel heads and their rollback targets, and each image's
    newest verified AMI."""
    # trust is required: without it channel logs cannot be read, and gc could remove an AMI a channel points at;
    # a store with no manifests at all has nothing to protect
    try:
        ledger = open_ledger(loaded)
    except SignatureError:
        if not spec_store(loaded).manifest_keys(image):
            return Protected()
        raise
    from imagekit.manifest.channels import assignments, channel_names

    channel: dict[str, str] = {}
    verified: dict[str, str] = {}
    newest: dict[str, tuple[str, dict[str, str]]] = {}
    # the build a `rollback` of each channel would go back to, as docker gc keeps it: never deregister its AMIs
    rollback: dict[str, str] = {}
    for name in [image] if image else sorted(loaded.spec.images):
        for ch in channel_names(ledger.store, name):
            stack = assignments(ledger.channel_records(name, ch))
            target = ledger.rollback_target(name, stack)  # past revoked and repeated ids, as rollback goes
            if target is not None:
                rollback.setdefault(target.id, f"{name}@{ch} (rollback target)")
    for e in ledger.entries(image):
        b = e.build
        if b is None or b.target != "ami":
            continue
        if b.id in rollback:
            for ami in b.amis.values():
                channel.setdefault(ami, rollback[b.id])
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
def _ec2(loaded: LoadedSpec, rehearse: bool) -> Iterator[tuple[Aws, RehearsalEc2 | None]]:
    if not rehearse:
        yield Aws(), None
        return
    from imagekit.targets.ami.rehearsal import rehearsal

    log = log_dir() / "ami" / f"{loaded.spec.name}-gc-rehearsal.log"
    with rehearsal(work_dir(loaded.root) / "rehearsal", loaded.spec.aws.region, log, loaded.spec.aws.ami_regions) as r:
        yield r.aws, r


def gc_spec(
    loaded: LoadedSpec,
    *,
    keep: int,
    image: str | None = None,
    dry_run: bool = False,
    rehearse: bool = False,
    reporter: Reporter = silent,
) -> GcResult:
    """Deregister a spec's old AMIs (and delete their snapshots) in every region; record what was removed."""
    protected = protected_amis(loaded, image)
    aws_cfg = loaded.spec.aws
    with _ec2(loaded, rehearse) as (aws, ec2):
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
        if ec2 is not None and not dry_run:
            # a rehearsal AMI is also an image in the Docker engine
            ec2.forget([ami for d in result.removed for ami in d.amis.values()])
    result.rehearsal, result.image = rehearse, image
    if not dry_run and result.removed:
        store = spec_store(loaded)
        key = record_key()
        store.backend.create(key, record_json(result))
        result.record = store.backend.location(key)
        reporter(Event("done", f"removed {len(result.removed)} AMI build(s); record {result.record}"))
    return result
