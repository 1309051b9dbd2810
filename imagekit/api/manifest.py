"""manifest list/show/verify/diff, promote, rollback, revoke, resolve, keygen."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagekit.errors import SignatureError, StoreError, UsageError
from imagekit.manifest.bundle import BUNDLE_SUFFIX, check_bundle
from imagekit.manifest.channels import (
    CHANNEL_TYPE,
    REVOCATION_TYPE,
    Record,
    append_signed,
    assignments,
    channel_log,
    now_iso,
    who_default,
)
from imagekit.manifest.dsse import envelope_payload, parse_envelope
from imagekit.manifest.keys import KMS_PREFIX, KeyType, TrustedKey, keygen, load_signer
from imagekit.manifest.ledger import Checked, Entry, Ledger, Trust, check_envelope, open_ledger, trust_from_file
from imagekit.manifest.sbom import SBOM_PREDICATE_TYPE, SBOM_SUFFIX, sbom_packages
from imagekit.manifest.statement import PREDICATE_TYPE, BuildRecord, parse_statement
from imagekit.manifest.store import MANIFEST_SUFFIX, REVOCATIONS, Store
from imagekit.spec import NAME_RE, LoadedSpec, find_spec, load_spec

ID_FILE_RE = re.compile(r"^([0-9a-f]{16})" + re.escape(MANIFEST_SUFFIX) + "$")


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
        builder=b.builder,
        started=b.started,
        failures=b.failures,
        size_bytes=b.size_bytes,
        dependencies=b.predicate.get("buildDefinition", {}).get("resolvedDependencies", []),
        spec=b.params.get("spec"),
        report=b.report(),
        key=(e.key_used.source if e.key_used else None),
    )
    return doc


@dataclass
class VerifyOutcome:
    """What `manifest verify` established."""

    id: str
    image: str
    key_source: str
    keyid: str
    passed: bool
    revocation_checked: bool
    cosign: str | None
    notes: list[str] = field(default_factory=list)


def _cosign_command(envelope_path: str, key: TrustedKey, build: BuildRecord) -> str | None:
    """The equivalent cosign (v3) checks, which match the subject digest; cosign verifies ECDSA P-256, not Ed25519."""
    if key.kind != "ecdsa-p256" or not build.subjects:
        return None
    if key.path is not None:
        key_arg = str(key.path)
    elif key.source.startswith(KMS_PREFIX):
        key_arg = "awskms:///" + key.source[len(KMS_PREFIX) :]
    else:
        key_arg = "cosign.pub"
    bundle = sidecar_path(envelope_path, BUNDLE_SUFFIX)
    digest = str(build.subjects[0].get("digest", {}).get("sha256", ""))
    lines = [
        f"cosign verify-blob-attestation --bundle {bundle} --key {key_arg} --type {PREDICATE_TYPE} "
        f"--insecure-ignore-tlog --digest {digest} --digestAlg sha256"
    ]
    if build.oci:
        # the pushed image: cosign finds the attestation at the registry (sha256-<digest>.att) and matches its digest
        lines.append(
            f"cosign verify-attestation --key {key_arg} --type {PREDICATE_TYPE} --insecure-ignore-tlog {build.oci}"
        )
    return "\n".join(lines)


def sidecar_path(envelope_path: str, suffix: str) -> str:
    """The path (or URL) of a file beside an envelope: <id>.intoto.json -> <id><suffix>."""
    return (
        envelope_path.removesuffix(MANIFEST_SUFFIX) + suffix
        if envelope_path.endswith(MANIFEST_SUFFIX)
        else (envelope_path + suffix)
    )


def _bundle_notes(ledger: Ledger, e: Entry) -> list[str]:
    raw = ledger.store.read_sidecar(e.key, BUNDLE_SUFFIX)
    if raw is None:
        return [f"no Sigstore bundle beside {e.id} (recorded before imagekit wrote them)"]
    check_bundle(raw, parse_envelope(e.raw), ledger.store.location(ledger.store.sidecar_key(
        e.key.split("/", 1)[0], e.id, BUNDLE_SUFFIX)))  # fmt: skip
    return []


def _check_file_name(path: Path, checked: Checked) -> list[str]:
    """A stored-looking file name (<16 hex>.intoto.json) must be the payload's id; other names only get a note."""
    m = ID_FILE_RE.match(path.name)
    if m and m.group(1) != checked.build.id:
        raise SignatureError(
            f"{path}: the file is named for manifest {m.group(1)} but its payload hashes to id {checked.build.id} "
            "(rule: file name is the id)"
        )
    return [] if m else [f"{path.name} is not named <id>{MANIFEST_SUFFIX}; its id is {checked.build.id}"]


def _hint_note(checked_ok: bool, key: TrustedKey) -> list[str]:
    if checked_ok:
        return []
    return [f"warning: the signature's keyid does not name the key that verified it ({key.keyid[:16]}…, "
            f"{key.source}); the keyid is an unsigned hint, so re-sign or fix the producer"]  # fmt: skip


def check_served(build: BuildRecord, image_ref: str) -> str:
    """The registry serves, for image_ref now, exactly the image the record's subject names; its digest."""
    from imagekit.runners.registry import Registry, split_reference

    host, repo, tag = split_reference(image_ref)
    served = Registry(host).manifest_digest(repo, tag or "latest")
    digests = {"sha256:" + str(s.get("digest", {}).get("sha256", "")) for s in build.subjects}
    if served is None or served not in digests:
        raise SignatureError(
            f"manifest {build.id}: {image_ref} is {served or 'not served'} at its registry, not the subject "
            f"{', '.join(sorted(digests))} (rule: subject is what the registry serves)"
        )
    return served


def verify_manifest(
    path: Path | str | None, ref: str, trust: Path | None = None, image: str | None = None
) -> VerifyOutcome:
    """Offline check: a trusted key signed it, the statement meets every strict rule, and it is not revoked.

    With image (REGISTRY/REPO:TAG), also online: the registry serves that subject for the reference now.
    """
    ref_path = Path(ref)
    loaded: LoadedSpec | None = None
    if path is not None or find_spec(None).exists():
        loaded = load_spec(path)
    notes: list[str] = []
    if loaded is None:
        if not ref_path.is_file():
            raise UsageError(f"{ref} is not a file, and there is no spec (-f) to find a manifest id in")
        if trust is None:
            raise UsageError("without a spec, pass --trust FILE (a trust file or a public key PEM)")
        tr: Trust = trust_from_file(trust)
        checked = check_envelope(None, ref_path.read_bytes(), tr)
        build, key = checked.build, checked.key
        notes += _check_file_name(ref_path, checked) + _hint_note(checked.keyid_hint_ok, key)
        notes.append("revocation not checked: no spec (-f) locates the store")
        if image:
            notes.append(f"{image} is {check_served(build, image)} at its registry: the subject")
        return VerifyOutcome(
            build.id, build.image, key.source, key.keyid, build.passed, False,
            _cosign_command(str(ref_path), key, build), notes,
        )  # fmt: skip
    ledger = open_ledger(loaded, trust)
    assert ledger.trust is not None
    if ref_path.is_file() and ref_path.name.endswith(".json"):
        checked = check_envelope(None, ref_path.read_bytes(), ledger.trust)
        build, key, location = checked.build, checked.key, str(ref_path)
        notes += _check_file_name(ref_path, checked) + _hint_note(checked.keyid_hint_ok, key)
    else:
        e = ledger.build(ref)
        assert e.build is not None and e.key_used is not None
        build, key, location = e.build, e.key_used, e.location
        notes += _hint_note(e.keyid_hint_ok, key) + _bundle_notes(ledger, e)
        if ledger.sbom(e) is not None:
            notes.append(f"SBOM {e.id}{SBOM_SUFFIX}: signed, same subjects, matches the record's digest")
    reason = ledger.revocations.reason(build)
    if reason:
        raise SignatureError(f"manifest {build.id} is revoked: {reason}")
    if not build.passed:
        notes.append(f"the signature is good, but this build FAILED verification: {'; '.join(build.failures)}")
    if build.rehearsal:
        notes.append("this is a rehearsal build")
    if image:
        notes.append(f"{image} is {check_served(build, image)} at its registry: the subject")
    return VerifyOutcome(
        build.id, build.image, key.source, key.keyid, build.passed, True,
        _cosign_command(location, key, build), notes,
    )  # fmt: skip


def manifest_sbom(path: Path | str | None, ref: str, trust: Path | None = None) -> dict[str, Any]:
    """`imagekit manifest sbom ID`: the verified CycloneDX document of a build."""
    loaded = load_spec(path)
    ledger = open_ledger(loaded, trust)
    e = ledger.build(ref)
    bom = ledger.sbom(e)
    if bom is None:
        raise StoreError(
            f"manifest {e.id} has no SBOM (recorded before imagekit wrote them, or its verification listed no "
            "packages); rebuild to get one"
        )
    return bom


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
    if not NAME_RE.match(channel):
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
    signer, _created = load_signer(key or loaded.spec.signing.key, base=loaded.root)
    return loaded, ledger, signer


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
    e = promotable(ledger, ref, image, allow_rehearsal=allow_rehearsal)
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
    revoked = ledger.revocations
    chosen: dict[str, str] = {}

    def make(records: list[Record], seq: int) -> dict[str, Any]:
        stack = assignments(records)
        if not stack:
            raise UsageError(f"channel {channel} of {image} has no assignment to roll back")
        current, earlier = stack[-1], stack[:-1]
        target = None
        for mid in reversed(earlier):
            b = ledger.entry(mid).build
            if b is not None and not revoked.reason(b):
                target = b
                break
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


def resolve(path: Path | str | None, image: str, channel: str, trust: Path | None = None) -> dict[str, Any]:
    """What a channel points at now: the image digest reference and/or AMI per region, from verified records."""
    _check_channel(channel)
    loaded = load_spec(path)
    _check_image(loaded, image)
    ledger = open_ledger(loaded, trust)
    stack = assignments(ledger.channel_records(image, channel))
    if not stack:
        raise StoreError(f"channel {channel} of {image} points at nothing (promote a build first)")
    e = ledger.build(stack[-1])
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


# --- registry ----------------------------------------------------------------------------------------


def _attestations_of(store: Store, key: str, raw: bytes) -> list[tuple[bytes, str]]:
    """(envelope bytes, predicateType) of a record and the SBOM statement beside it."""
    out = [(raw, PREDICATE_TYPE)]
    sbom = store.read_sidecar(key, SBOM_SUFFIX)
    if sbom is not None:
        out.append((sbom, SBOM_PREDICATE_TYPE))
    return out


def attach_record(
    store: Store, key: str, raw: bytes, build: BuildRecord, registry: str | None = None
) -> dict[str, Any]:
    """Push a record's envelopes beside its image at the registry (cosign's sha256-<digest>.att tag)."""
    from imagekit.manifest.attach import attach
    from imagekit.runners.registry import Registry, split_reference

    if not build.oci:
        raise UsageError(
            f"manifest {build.id} names no pushed image ({', '.join(build.subject_names)}): a registry holds "
            "attestations only beside an image it serves; build with --push REGISTRY/REPO"
        )
    host, repo, digest = split_reference(build.oci)
    if registry:
        host, repo, _ = split_reference(registry)
    done = attach(Registry(host), repo, digest, _attestations_of(store, key, raw))
    return {
        "manifest": build.id,
        "image": f"{host}/{repo}@{digest}",
        "tag": done.tag,
        "reference": done.reference,
        "attestations": len(done.layers),
        "added": len(done.added),
        "manifest_digest": done.manifest_digest,
    }


def attach_stored(store: Store, image: str, manifest_id: str) -> dict[str, Any]:
    """Attach a record just written (by its own signer, which the trust file may not list yet) beside its image."""
    key = store.manifest_key(image, manifest_id)
    raw = store.read(key)
    return attach_record(store, key, raw, parse_statement(manifest_id, envelope_payload(raw)))


def attach_manifest(
    path: Path | str | None, ref: str, registry: str | None = None, trust: Path | None = None
) -> dict[str, Any]:
    """`imagekit manifest attach ID [--registry REGISTRY/REPO]`: for a record made before, or to a mirror."""
    loaded = load_spec(path)
    ledger = open_ledger(loaded, trust)
    e = ledger.build(ref)  # only what verifies (and its SBOM too) goes out
    assert e.build is not None
    ledger.sbom(e)
    return attach_record(ledger.store, e.key, e.raw, e.build, registry)
