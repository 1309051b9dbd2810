"""gc decisions without AWS: newest N per image and layer, channel and newest-verified AMIs, parent chains."""

from __future__ import annotations

from pathlib import Path

from imagekit.retention.ami import Protected, plan_gc
from imagekit.runners.aws import Ami


def ami(ami_id: str, name: str, layer: str, created: str, parent: str = "", region: str = "us-east-1") -> Ami:
    tags = {"imagekit:spec": "s", "imagekit:image": "svc", "imagekit:layer": layer}
    if parent:
        tags["imagekit:parent-ami"] = parent
    return Ami(ami_id, region, name, created, "available", tags, (f"snap-{ami_id}",))


def test_keeps_newest_channel_verified_and_parents_in_every_region() -> None:
    amis = [
        ami("ami-b1", "base-1", "base", "2026-01-01"),
        ami("ami-r1", "runtime-1", "runtime", "2026-01-02", "ami-b1"),
        ami("ami-r2", "runtime-2", "runtime", "2026-01-05", "ami-b1"),
        ami("ami-a1", "app-1", "app", "2026-01-03", "ami-r1"),
        ami("ami-a1e", "app-1", "app", "2026-01-03", "ami-r1", region="eu-west-1"),
        ami("ami-a2", "app-2", "app", "2026-01-04", "ami-r1"),
        ami("ami-a2e", "app-2", "app", "2026-01-04", "ami-r1", region="eu-west-1"),
        ami("ami-a3", "app-3", "app", "2026-01-06", "ami-r2"),
        ami("ami-a4", "app-4", "app", "2026-01-07", "ami-r2"),
    ]
    protected = Protected(channel={"ami-a1": "svc@prod"}, verified={"ami-a3": "m3"})
    decisions = {d.name: d for d in plan_gc(amis, keep=1, protected=protected, primary_region="us-east-1")}
    assert decisions["app-1"].action == "keep" and "channel" in decisions["app-1"].reason
    assert decisions["app-3"].action == "keep" and "verified" in decisions["app-3"].reason
    assert decisions["app-4"].action == "keep"
    assert decisions["runtime-1"].action == "keep" and "parent" in decisions["runtime-1"].reason
    assert decisions["runtime-2"].action == "keep"
    assert decisions["base-1"].action == "keep"
    removed = [d for d in decisions.values() if d.action == "remove"]
    assert [d.name for d in removed] == ["app-2"]
    assert removed[0].amis == {"eu-west-1": "ami-a2e", "us-east-1": "ami-a2"}
    assert removed[0].snapshots == ["snap-ami-a2", "snap-ami-a2e"]


def test_keep_counts_builds_not_region_copies() -> None:
    amis = [
        ami("ami-1", "app-1", "app", "2026-01-01"),
        ami("ami-1e", "app-1", "app", "2026-01-01", region="eu-west-1"),
        ami("ami-2", "app-2", "app", "2026-01-02"),
        ami("ami-2e", "app-2", "app", "2026-01-02", region="eu-west-1"),
    ]
    decisions = plan_gc(amis, keep=2, protected=Protected(), primary_region="us-east-1")
    assert all(d.action == "keep" for d in decisions)


def test_protected_amis_keep_each_channels_rollback_target(tmp_path: Path) -> None:
    """As docker gc does: the build a `rollback` would go back to keeps its AMIs, or rollback points at nothing."""
    from manifest_helpers import make_spec

    from imagekit.api.manifest import promote
    from imagekit.manifest.record import record_build
    from imagekit.plan import plan_image
    from imagekit.retention.ami import protected_amis
    from imagekit.spec import load_spec

    loaded = make_spec(tmp_path)
    loaded.path.write_text(loaded.path.read_text().replace("  app: {leaf: app}", "  app: {leaf: app, targets: [ami]}"))
    loaded = load_spec(loaded.path)
    layers = plan_image(loaded, "app", "ami").layers
    ids = []
    for n in range(3):
        ami = {"region": "us-east-1", "id": f"ami-{n:08d}", "account": "123456789012", "snapshots": [f"snap-{n}"]}
        ids.append(record_build(loaded, "app", "ami", layers, started=f"2026-11-2{n}T00:00:00Z",
                                finished=f"2026-11-2{n}T00:10:00Z",
                                amis=[ami], base="ami-785db401", report={"passed": True}).id)  # fmt: skip
    for mid in ids:
        promote(loaded.path, "app", mid, "prod", why="t", who="t")
    protected = protected_amis(loaded, "app")
    assert protected.channel["ami-00000002"] == "app@prod"
    assert protected.channel["ami-00000001"] == "app@prod (rollback target)"
    assert "ami-00000000" not in protected.channel  # two back is not a rollback target: gc may remove it


def test_the_rehearsal_reads_the_ssh_port_past_engine_warnings() -> None:
    from imagekit.targets.ami.rehearsal import published_port

    # a loaded engine made `docker port` print a warning first; that line once crashed a build (exit 3)
    noisy = ['time="2026-12-02T00:33:27Z" level=error msg="error waiting for container: context canceled"']
    assert published_port([*noisy, "127.0.0.1:49153"]) == 49153
    assert published_port(noisy) is None
    assert published_port([]) is None
