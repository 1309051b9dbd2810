"""Retention for the docker target: untag the images of builds that fell out of `keep`, never one still in use.

One decision over the store's records, whichever engine holds the images: a Docker Engine, or containers-storage
through buildah (`--engine buildah`, build.engine). Tags are named by layer hash, the same in both engines, so
the newest `keep` builds are counted over every engine's records and each engine keeps the tags those need.

Kept, whatever `keep` says: the newest `keep` builds of each image, the build each channel points at and the one
before it (a rollback's target), and every layer hash any kept build of any image of the spec uses. Only this
spec's own tags are touched (`imagekit/<spec>-<layer>:<hash16>` and `<repository>:<leaf hash16>`); removing a tag
frees the layers once nothing else uses them. Manifests are never deleted: the store stays the audit log.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from imagekit.events import Event, Reporter, silent
from imagekit.manifest.ledger import Ledger
from imagekit.manifest.statement import BuildRecord
from imagekit.names import layer_tag
from imagekit.spec import LoadedSpec


class Untagger(Protocol):
    """What gc needs from the engine."""

    def exists(self, ref: str) -> bool: ...

    def remove_image(self, ref: str) -> None: ...

    def repo_tags(self, repository: str) -> list[str]: ...

    def inspect(self, ref: str) -> Any: ...


# what a same-hash rebuild leaves on the image it replaced (targets/docker.py: DockerTarget._keep_replaced)
REPLACED_TAG = re.compile(r"[0-9a-f]{16}-replaced-[0-9a-f]{12}")


@dataclass
class DockerGc:
    """What docker gc kept and removed for one image."""

    image: str
    keep: int
    engine: str = "docker"
    kept: list[str] = field(default_factory=list)
    removed_builds: list[str] = field(default_factory=list)
    removed_tags: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        """The report.json shape."""
        return {"target": "docker", **asdict(self)}

    def lines(self) -> list[str]:
        """What `imagekit gc` prints."""
        verb = "would untag" if self.dry_run else "untagged"
        out = [f"{verb:12} {self.image} {tag}" for tag in self.removed_tags]
        out += [f"kept         {self.image} build {mid}" for mid in self.kept]
        return out + [f"error        {self.image} {e}" for e in self.errors]


def _tags(loaded: LoadedSpec, b: BuildRecord) -> list[str]:
    out = [layer_tag(loaded.spec.name, name, digest) for name, digest in b.layers if name in loaded.spec.layers]
    img = loaded.spec.images.get(b.image)
    if img is not None and b.layers:
        out.append(f"{img.repository or b.image}:{b.leaf_hash[:16]}")
    return out


def protected_ids(ledger: Ledger, image: str) -> set[str]:
    """Each channel's current build and the one a rollback would go back to (past revoked and repeated ids, as
    rollback itself goes: with A -> B -> C and B revoked that is A, not B)."""
    from imagekit.manifest.channels import assignments, channel_names

    out: set[str] = set()
    for channel in channel_names(ledger.store, image):
        stack = assignments(ledger.channel_records(image, channel))
        out.update(stack[-1:])
        target = ledger.rollback_target(image, stack)
        if target is not None:
            out.add(target.id)
    return out


def docker_gc(
    loaded: LoadedSpec,
    ledger: Ledger,
    engine: Untagger,
    *,
    images: list[str],
    keep: int | None = None,
    dry_run: bool = False,
    reporter: Reporter = silent,
    kind: str = "docker",
) -> list[DockerGc]:
    """Untag the docker images of builds beyond each image's `keep` (images.<name>.keep, else retention.keep) in
    one engine (`kind` names it in the report)."""
    entries = [e for e in ledger.entries(with_channels=False) if e.build is not None]
    builds = [e.build for e in entries if e.build is not None and e.build.target == "docker"]
    kept_ids: set[str] = set()
    results: dict[str, DockerGc] = {}
    for name in loaded.spec.images:
        n = keep or loaded.spec.images[name].keep or loaded.spec.retention.keep
        mine = [b for b in builds if b.image == name]  # oldest first
        protected = protected_ids(ledger, name)
        kept = {b.id for b in mine[-n:]} | protected
        kept_ids |= kept
        results[name] = DockerGc(name, n, kind, kept=[b.id for b in mine if b.id in kept], dry_run=dry_run)
    in_use = {tag for b in builds if b.id in kept_ids for tag in _tags(loaded, b)}
    for name in images:
        res = results[name]
        for b in (b for b in builds if b.image == name and b.id not in kept_ids):
            before = len(res.removed_tags)
            for tag in _tags(loaded, b):
                if tag in in_use or tag in res.removed_tags or not engine.exists(tag):
                    continue
                if dry_run:
                    res.removed_tags.append(tag)
                    continue
                try:
                    engine.remove_image(tag)
                except Exception as exc:  # an engine refusal (in use by a container) is reported, not fatal
                    res.errors.append(f"{tag}: {str(exc).strip()[:200]}")
                    continue
                res.removed_tags.append(tag)
            if len(res.removed_tags) > before:
                res.removed_builds.append(b.id)
        _replaced(loaded, engine, name, [b for b in builds if b.id in kept_ids], res)
        if res.removed_tags and not dry_run:
            what = f"gc: untagged {len(res.removed_tags)} image(s) of old builds ({kind})"
            reporter(Event("done", what, name, "", "docker"))
    return [results[n] for n in images]


def _replaced(loaded: LoadedSpec, engine: Untagger, image: str, kept: list[BuildRecord], res: DockerGc) -> None:
    """The `<hash16>-replaced-<id12>` tags of an image's repository go as any old build's tags go: kept while a
    kept build (the newest, a channel's head, a rollback target) is that image, by local ID or registry digest,
    removed once none is (they would pile up with every --force, refresh and revoked-layer rebuild)."""
    img = loaded.spec.images.get(image)
    if img is None:
        return
    repo = img.repository or image
    if getattr(engine, "repo_tags", None) is None:
        return  # an engine that cannot list a repository's tags (a test's fake) has made none
    wanted = {"sha256:" + str((s.get("digest") or {}).get("sha256", "")) for b in kept for s in b.subjects}
    for ref in engine.repo_tags(repo):
        if not REPLACED_TAG.fullmatch(ref.rsplit(":", 1)[1]) or ref in res.removed_tags:
            continue
        info = engine.inspect(ref)
        if info is None:
            continue
        ids = {info.id, *(d.rsplit("@", 1)[-1] for d in info.repo_digests)}
        if ids & wanted:
            continue
        if not res.dry_run:
            try:
                engine.remove_image(ref)
            except Exception as exc:  # as for the build tags: an engine refusal is reported, not fatal
                res.errors.append(f"{ref}: {str(exc).strip()[:200]}")
                continue
        res.removed_tags.append(ref)


@dataclass
class DockerGcResult:
    """What `imagekit gc --target docker` kept and untagged, per image."""

    spec: str
    dry_run: bool
    images: list[DockerGc] = field(default_factory=list)
    record: str = ""  # docker gc writes no record: the manifests already say what each tag was
    engine: str = "docker"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {"target": "docker", "engine": self.engine, "spec": self.spec, "dry_run": self.dry_run,
                "images": self.rows()}  # fmt: skip

    def rows(self) -> list[dict[str, Any]]:
        """One report.json row per image."""
        return [g.to_json() for g in self.images]

    def lines(self) -> list[str]:
        """What `imagekit gc` prints."""
        return [line for g in self.images for line in g.lines()]


def gc_spec(
    loaded: LoadedSpec,
    *,
    keep: int | None = None,
    image: str | None = None,
    dry_run: bool = False,
    engine: Untagger | None = None,
    engine_kind: str | None = None,
    reporter: Reporter = silent,
) -> DockerGcResult:
    """Untag the images of a spec's docker builds beyond `keep` (all images, or one) in the engine `engine_kind`
    names (docker | buildah; default the spec's build.engine), or in `engine` when given (a test's fake)."""
    from imagekit.manifest.ledger import open_ledger
    from imagekit.targets.engines import open_engine

    kind = getattr(engine, "kind", None) or engine_kind or loaded.spec.build.engine
    images = [image] if image else [n for n, img in loaded.spec.images.items() if "docker" in img.targets]
    done = docker_gc(
        loaded, open_ledger(loaded), engine or open_engine(kind), images=images, keep=keep, dry_run=dry_run,
        reporter=reporter, kind=kind,
    )  # fmt: skip
    return DockerGcResult(str(loaded.path), dry_run, done, engine=kind)
