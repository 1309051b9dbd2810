"""manifest list/show/verify/diff, promote, rollback, revoke, resolve, keygen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imagekit.errors import SignatureError, StoreError, UsageError
from imagekit.manifest.channels import (
    CHANNEL_TYPE,
    REVOCATION_TYPE,
    Record,
    append_signed,
    assignments,
    channel_log,
    now_iso,
    seal_heads,
    who_default,
)
from imagekit.manifest.dsse import envelope_payload
from imagekit.manifest.keys import KeyType, keygen, load_signer
from imagekit.manifest.ledger import Entry, Ledger, bulk, open_ledger
from imagekit.manifest.sbom import sbom_packages
from imagekit.manifest.statement import BuildRecord, parse_statement
from imagekit.manifest.store import REVOCATIONS
from imagekit.spec import NAME_RE, LoadedSpec, load_spec


def generate_key(out: Path | None, kind: KeyType = "ecdsa-p256") -> tuple[Path, Path]:
    """`imagekit keygen`: write imagekit.key and imagekit.pub into out (default: the config folder)."""
    from imagekit.paths import config_dir

    return keygen(out or config_dir(), kind)


def entry_json(e: Entry) -> dict[str, Any]:
    """The `manifest list --json` shape of one manifest."""
    b = e.build
    return {
        "id": e.id,
        "image": b.image if b else e.key.split("/", 1)[0],
        "target": b.target if b else None,
        "created": b.created if b else None,
        "subjects": b.subject_names if b else [],
        "verified": bool(b and b.passed),
        "signature": "ok" if e.signed_ok else e.problem,
        "revoked": e.revoked,
        "rehearsal": bool(b and b.rehearsal),
        "channels": sorted(e.channels),
        "location": e.location,
    }


def list_manifests(
    path: Path | str | None, image: str | None = None, trust: Path | None = None
) -> list[dict[str, Any]]:
    """Every manifest in the spec's store (of one image), oldest first."""
    loaded = load_spec(path)
    ledger = open_ledger(loaded, trust, require_trust=False)
    with bulk():
        return [entry_json(e) for e in ledger.entries(image)]


def show_manifest(path: Path | str | None, ref: str, trust: Path | None = None) -> dict[str, Any]:
    """One manifest in full: summary, layers, dependencies, builder, verification report."""
    loaded = load_spec(path)
    ledger = open_ledger(loaded, trust, require_trust=False)
    e = ledger.entry(ref)
    problem = e.problem
    if e.build is None:
        # show what it claims, with the signature problem in front: the content is not to be trusted
        e.build = parse_statement(e.id, envelope_payload(e.raw), strict=False)
    doc = entry_json(e)
    doc["signature"] = "ok" if problem is None else problem
    b = e.build
    assert b is not None
    doc.update(
        layers=[{"name": n, "hash": h} for n, h in b.layers],
        artifact=b.artifact(),
        models=b.models,
        model_signers=b.model_signers,
        builder=b.builder,
        started=b.started,
        failures=b.failures,
        size_bytes=b.size_bytes,
        dependencies=b.predicate.get("buildDefinition", {}).get("resolvedDependencies", []),
        spec=b.params.get("spec"),
        source=b.source,
        report=b.report(),
        key=(e.key_used.source if e.key_used else None),
    )
    return doc


# --- diff --------------------------------------------------------------------------------------------


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(doc, list) and doc and all(isinstance(x, dict) for x in doc):
        for i, v in enumerate(doc):
            key = v.get("name") or v.get("path") or i
            out.update(_flatten(v, f"{prefix}[{key}]"))
    else:
        out[prefix] = doc
    return out


# Report fields that differ on every run and say nothing about what changed in the image (matched on the leaf key).
_NOISE = frozenset(
    {"host", "started", "finished", "started_at", "finished_at", "seconds", "duration", "elapsed", "log", "log_path",
     "report_path", "image_ref", "image_id", "spec", "last_body", "seconds_to_ready", "kernel", "timeout"}
)  # fmt: skip
_VERSION_LEAVES = frozenset({"cuda", "cudnn", "driver"})


def _segments(key: str) -> list[str]:
    return [part for part in key.replace("[", ".").replace("]", "").split(".") if part]


def _changes(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append({"key": key, "old": a.get(key), "new": b.get(key)})
    return out


def _kind(key: str) -> str:
    segs = _segments(key)
    leaf = segs[-1] if segs else key
    if {"pip", "dpkg"} & set(segs):
        return "packages"
    if "models" in segs:
        return "weights"
    if "version" in leaf or leaf in _VERSION_LEAVES:
        return "versions"
    return "verification"


def diff_builds(
    a: BuildRecord, b: BuildRecord, sboms: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)
) -> dict[str, Any]:
    """What changed between two builds, by section; packages from their SBOMs when both have one."""

    def flat(report: dict[str, Any] | None) -> dict[str, Any]:
        return {k: v for k, v in _flatten(report or {}).items() if _segments(k)[-1:] and _segments(k)[-1] not in _NOISE}

    by_kind: dict[str, list[dict[str, Any]]] = {"packages": [], "weights": [], "versions": [], "verification": []}
    for change in _changes(flat(a.report()), flat(b.report())):
        by_kind[_kind(change["key"])].append(change)
    if sboms[0] is not None and sboms[1] is not None:
        # the signed inventory of what was verified, one entry per package (older records: the report's lists)
        by_kind["packages"] = _changes(sbom_packages(sboms[0]), sbom_packages(sboms[1]))
    status = _changes({"passed": a.passed, "failures": a.failures}, {"passed": b.passed, "failures": b.failures})
    return {
        "old": a.id,
        "new": b.id,
        "layers": _changes(dict(a.layers), dict(b.layers)),
        "weights": _changes(a.models, b.models) + by_kind["weights"],
        "versions": by_kind["versions"],
        "packages": by_kind["packages"],
        "verification": status + by_kind["verification"],
        "size": {"old": a.size_bytes, "new": b.size_bytes} if a.size_bytes != b.size_bytes else None,
        "artifact": _changes(a.artifact(), b.artifact()),
        "builder": _changes(a.builder, b.builder),
    }


def diff_manifests(path: Path | str | None, old: str, new: str, trust: Path | None = None) -> dict[str, Any]:
    """`manifest diff ID1 ID2`."""
    loaded = load_spec(path)
    ledger = open_ledger(loaded, trust, require_trust=False)
    builds, boms = [], []
    for ref in (old, new):
        e = ledger.entry(ref)
        if e.build is None:
            raise SignatureError(f"manifest {e.id} ({e.location}): {e.problem}")
        builds.append(e.build)
        boms.append(ledger.sbom(e) if ledger.trust is not None else None)
    return diff_builds(builds[0], builds[1], (boms[0], boms[1]))


# --- channels ----------------------------------------------------------------------------------------


def _check_channel(channel: str) -> None:
    if not NAME_RE.fullmatch(channel):
        raise UsageError(f"channel {channel!r}: use lowercase letters, digits, '.', '_' or '-'")


def _check_image(loaded: LoadedSpec, image: str) -> None:
    if image not in loaded.spec.images:
        raise UsageError(f"unknown image {image!r}; the spec has {', '.join(sorted(loaded.spec.images))}")


def promotable(ledger: Ledger, ref: str, image: str, *, allow_rehearsal: bool = False) -> Entry:
    """The build if it may be promoted; UsageError/SignatureError saying why not."""
    e = ledger.entry(ref)
    if e.build is None:
        raise SignatureError(
            f"refusing to promote {e.id}: it is unsigned or its signature does not verify ({e.problem})"
        )
    b = e.build
    if b.image != image:
        raise UsageError(f"manifest {b.id} is a build of {b.image!r}, not {image!r}")
    if e.revoked:
        raise StoreError(f"refusing to promote {b.id}: it is revoked ({e.revoked})")
    if not b.passed:
        why = "; ".join(b.failures) or "not verified"
        raise StoreError(f"refusing to promote {b.id}: its verification failed ({why})")
    if b.rehearsal and not allow_rehearsal:
        raise UsageError(f"refusing to promote {b.id}: it is a rehearsal build (pass --allow-rehearsal)")
    if not b.artifact():
        raise StoreError(f"refusing to promote {b.id}: it records no image digest or AMI")
    return e


def _context(path: Path | str | None, trust: Path | None, key: str | None) -> tuple[LoadedSpec, Ledger, Any]:
    loaded = load_spec(path)
    ledger = open_ledger(loaded, trust)
    ref, base = signer_ref(loaded, key)
    signer, _created = load_signer(ref, base=base)
    return loaded, ledger, signer


def signer_ref(loaded: LoadedSpec, key: str | None) -> tuple[str | None, Path]:
    """A key reference and the folder it is relative to: --key like --trust against the current folder, the
    spec's signing.key against the spec's folder."""
    if key:
        return key, Path.cwd()
    return loaded.spec.signing.key, loaded.root


def promote(
    path: Path | str | None,
    image: str,
    ref: str,
    channel: str,
    *,
    why: str = "",
    who: str | None = None,
    allow_rehearsal: bool = False,
    trust: Path | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Point a channel at a verified build, as a new signed record of the channel's log."""
    _check_channel(channel)
    loaded, ledger, signer = _context(path, trust, key)
    _check_image(loaded, image)
    try:
        e = promotable(ledger, ref, image, allow_rehearsal=allow_rehearsal)
    except (StoreError, UsageError):
        # not a manifest id (prefix): a release tag names the newest verified build carrying it
        if not any(e.build is not None and ref in e.build.tags for e in ledger.entries(image, with_channels=False)):
            raise
        e = promotable(ledger, tagged_build(ledger, image, ref).id, image, allow_rehearsal=allow_rehearsal)
    assert e.build is not None
    build = e.build

    def make(records: list[Record], seq: int) -> dict[str, Any]:
        return {
            "action": "promote",
            "image": image,
            "channel": channel,
            "manifest": build.id,
            "artifact": build.artifact(),
            "who": who or who_default(),
            "when": now_iso(),
            "why": why,
        }

    rec = append_signed(ledger.store, channel_log(image, channel), signer=signer, trusted=ledger.keys,
                        expect=CHANNEL_TYPE, build=make)  # fmt: skip
    return {"image": image, "channel": channel, "manifest": build.id, "seq": rec.seq, "record": rec.location}


def rollback(
    path: Path | str | None,
    image: str,
    channel: str,
    *,
    why: str = "",
    who: str | None = None,
    trust: Path | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Point a channel back at its previous assignment (skipping revoked builds)."""
    _check_channel(channel)
    loaded, ledger, signer = _context(path, trust, key)
    _check_image(loaded, image)
    _ = ledger.revocations  # the revocation log is read (and checked) before the channel log is appended to
    chosen: dict[str, str] = {}

    def make(records: list[Record], seq: int) -> dict[str, Any]:
        stack = assignments(records)
        if not stack:
            raise UsageError(f"channel {channel} of {image} has no assignment to roll back")
        current = stack[-1]
        target = ledger.rollback_target(image, stack)  # the one gc keeps for this channel
        if target is None:
            raise UsageError(
                f"channel {channel} of {image} has no earlier, non-revoked build to roll back to (now {current})"
            )
        chosen.update(old=current, new=target.id)
        return {
            "action": "rollback",
            "image": image,
            "channel": channel,
            "manifest": target.id,
            "from": current,
            "artifact": target.artifact(),
            "who": who or who_default(),
            "when": now_iso(),
            "why": why,
        }

    rec = append_signed(ledger.store, channel_log(image, channel), signer=signer, trusted=ledger.keys,
                        expect=CHANNEL_TYPE, build=make)  # fmt: skip
    return {"image": image, "channel": channel, "manifest": chosen["new"], "from": chosen["old"], "seq": rec.seq,
            "record": rec.location}  # fmt: skip


def revoke(
    path: Path | str | None,
    ref: str,
    *,
    reason: str,
    layer: str | None = None,
    who: str | None = None,
    trust: Path | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Revoke a build (or one layer of its chain): every build whose chain has a revoked layer hash is revoked."""
    if not reason.strip():
        raise UsageError("revoke needs --reason TEXT (it goes into the signed record)")
    _loaded, ledger, signer = _context(path, trust, key)
    e = ledger.build(ref)
    assert e.build is not None
    build = e.build
    names = [n for n, _ in build.layers]
    if layer is None:
        layer = names[-1]
    if layer not in names:
        raise UsageError(f"build {build.id} has no layer {layer!r} (its layers: {', '.join(names)})")
    # the named layer and everything built from it: its hash and every hash after it in this chain
    start = names.index(layer)
    hashes = [h for _, h in build.layers[start:]]

    def make(records: list[Record], seq: int) -> dict[str, Any]:
        return {
            "manifest": build.id,
            "image": build.image,
            "layer": layer,
            "layers": hashes,
            "who": who or who_default(),
            "when": now_iso(),
            "why": reason,
        }

    rec = append_signed(ledger.store, REVOCATIONS, signer=signer, trusted=ledger.keys, expect=REVOCATION_TYPE,
                        build=make)  # fmt: skip
    # what the revocation reaches now (more builds may come to share the hash later; those are revoked too)
    ledger.__dict__.pop("revocations", None)
    affected = [x.id for x in ledger.entries(with_channels=False) if x.revoked]
    return {"manifest": build.id, "layer": layer, "hash": hashes[0], "seq": rec.seq, "revoked": affected,
            "record": rec.location}  # fmt: skip


def tagged_build(ledger: Ledger, image: str, tag: str) -> Entry:
    """The newest signed, verified, not revoked build of `image` recorded with release tag `tag`."""
    hits = [e for e in ledger.entries(image, with_channels=False) if e.build is not None and tag in e.build.tags]
    good = [e for e in hits if e.build is not None and e.build.passed and not e.revoked]
    if not good:
        why = f"{len(hits)} tagged build(s), none verified and not revoked" if hits else "no build carries it"
        raise StoreError(f"tag {tag} of {image}: {why} (tag a build with `imagekit build --tag {tag}`)")
    return good[-1]  # entries are oldest first


def resolve(
    path: Path | str | None,
    image: str,
    channel: str | None = None,
    trust: Path | None = None,
    *,
    tag: str | None = None,
) -> dict[str, Any]:
    """What a channel (or a release tag) points at now: the image digest reference and/or AMI per region."""
    if (channel is None) == (tag is None):
        raise UsageError("resolve takes --channel NAME or --tag TAG (one of them)")
    loaded = load_spec(path)
    _check_image(loaded, image)
    ledger = open_ledger(loaded, trust)
    if tag is not None:
        e = tagged_build(ledger, image, tag)
        assert e.build is not None
        return {"image": image, "tag": tag, "manifest": e.id, **e.build.artifact()}
    assert channel is not None
    _check_channel(channel)
    stack = assignments(ledger.channel_records(image, channel))
    if not stack:
        raise StoreError(f"channel {channel} of {image} points at nothing (promote a build first)")
    e = ledger.build(stack[-1], image)
    assert e.build is not None
    if e.revoked:
        raise StoreError(
            f"channel {channel} of {image} points at {e.id}, which is revoked ({e.revoked}); "
            f"run `imagekit rollback {image} --channel {channel}`"
        )
    return {"image": image, "channel": channel, "manifest": e.id, **e.build.artifact()}


def write_json(path: Path, doc: Any) -> None:
    """Write JSON (indented, sorted keys) to a file the user named; UsageError naming it when that fails."""
    from imagekit.fsutil import atomic_write

    try:
        atomic_write(path, json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def dumps(doc: Any) -> str:
    """JSON text for messages."""
    return json.dumps(doc, sort_keys=True)


def channel_history(
    path: Path | str | None, image: str, channel: str, trust: Path | None = None
) -> list[dict[str, Any]]:
    """A channel's verified log, oldest first: seq, action, manifest, who, when, why, and the signing key."""
    _check_channel(channel)
    loaded = load_spec(path)
    _check_image(loaded, image)
    ledger = open_ledger(loaded, trust)
    fields = ("action", "manifest", "from", "who", "when", "why")
    return [
        {"seq": r.seq, **{k: r.doc[k] for k in fields if k in r.doc}, "keyid": r.keyid}
        for r in ledger.channel_records(image, channel)
    ]


def seal_log_heads(path: Path | str | None, trust: Path | None = None, key: str | None = None) -> dict[str, Any]:
    """Sign heads for a store's logs written before logs had signed heads, after verifying every record."""
    _loaded, ledger, signer = _context(path, trust, key)
    return {"store": ledger.store.url, "sealed": seal_heads(ledger.store, signer, ledger.keys)}


def sign_model_file(path: Path, key: Path, out: Path | None = None) -> tuple[Path, str]:
    """`imagekit sign-model PATH --key K`: an OpenSSF model-signing bundle beside the weights; (its path, signer)."""
    from imagekit.modelsig import sign_model

    return sign_model(path, key, out)
