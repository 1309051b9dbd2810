"""Evidence about a build for outside tools: strict `manifest verify`, the SBOM, attestations at the registry."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagekit.errors import SignatureError, StoreError, UsageError
from imagekit.inputs import MAX_RECORD_BYTES, is_file, read_regular
from imagekit.manifest.bundle import BUNDLE_SUFFIX, check_bundle
from imagekit.manifest.dsse import envelope_payload, parse_envelope
from imagekit.manifest.keys import KMS_PREFIX, TrustedKey
from imagekit.manifest.ledger import Checked, Entry, Ledger, Trust, check_envelope, open_ledger, trust_from_file
from imagekit.manifest.sbom import SBOM_PREDICATE_TYPE, SBOM_SUFFIX
from imagekit.manifest.statement import PREDICATE_TYPE, BuildRecord, parse_statement
from imagekit.manifest.store import MANIFEST_SUFFIX, Store
from imagekit.spec import LoadedSpec, find_spec, load_spec

ID_FILE_RE = re.compile(r"^([0-9a-f]{16})" + re.escape(MANIFEST_SUFFIX) + "$")


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
    m = ID_FILE_RE.fullmatch(path.name)
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


def _read_manifest(path: Path) -> bytes:
    return read_regular(path, what="manifest", limit=MAX_RECORD_BYTES)


def verify_manifest(
    path: Path | str | None, ref: str, trust: Path | None = None, image: str | None = None
) -> VerifyOutcome:
    """Offline check: a trusted key signed it, the statement meets every strict rule, and it is not revoked.

    With image (REGISTRY/REPO:TAG), also online: the registry serves that subject for the reference now.
    """
    if image is not None and not image.strip():
        # `--image "$(imagekit resolve ...)"` with a resolve that failed: never pass without the check asked for
        raise UsageError("--image is empty: name REGISTRY/REPO:TAG (or @sha256:...), or leave --image out")
    ref_path = Path(ref)
    loaded: LoadedSpec | None = None
    if path is not None or find_spec(None).exists():
        loaded = load_spec(path)
    notes: list[str] = []
    if loaded is None:
        if not is_file(ref_path):
            raise UsageError(f"{ref} is not a file, and there is no spec (-f) to find a manifest id in")
        if trust is None:
            raise UsageError("without a spec, pass --trust FILE (a trust file or a public key PEM)")
        tr: Trust = trust_from_file(trust)
        checked = check_envelope(None, _read_manifest(ref_path), tr)
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
    if is_file(ref_path) and ref_path.name.endswith(".json"):
        checked = check_envelope(None, _read_manifest(ref_path), ledger.trust)
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


# --- registry ---------------------------------------------------------------------------------------


def _attestations_of(store: Store, key: str, raw: bytes) -> list[tuple[bytes, str]]:
    """(envelope bytes, predicateType) of a record and the SBOM and scan statements beside it."""
    from imagekit.manifest.vuln import VULN_SUFFIX
    from imagekit.scan.findings import VULN_PREDICATE_TYPE

    out = [(raw, PREDICATE_TYPE)]
    sbom = store.read_sidecar(key, SBOM_SUFFIX)
    if sbom is not None:
        out.append((sbom, SBOM_PREDICATE_TYPE))
    vuln = store.read_sidecar(key, VULN_SUFFIX)
    if vuln is not None:
        out.append((vuln, VULN_PREDICATE_TYPE))
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
    from imagekit.manifest.vuln import read_vuln

    read_vuln(ledger, e)
    return attach_record(ledger.store, e.key, e.raw, e.build, registry)
