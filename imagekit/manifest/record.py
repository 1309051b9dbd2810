"""record_build: turn a finished build (and its verification) into a signed manifest in the store; plan lookup."""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from imagekit import __version__
from imagekit.errors import ImagekitError, SignatureError, StoreError
from imagekit.events import Event, Reporter, silent
from imagekit.inputs import MAX_LINES, MAX_RECORD_BYTES, JsonInputError, bound_lines, load_json, read_text
from imagekit.manifest.bundle import BUNDLE_SUFFIX, bundle_bytes, sigstore_bundle
from imagekit.manifest.dsse import envelope_bytes, sign_envelope
from imagekit.manifest.keys import load_signer
from imagekit.manifest.ledger import Ledger, resolve_trust, spec_store
from imagekit.manifest.rules import is_rfc3339
from imagekit.manifest.sbom import (
    SBOM_BUNDLE_SUFFIX,
    SBOM_SUFFIX,
    bom_sha256,
    cyclonedx_sbom,
    inventory,
    sbom_statement,
)
from imagekit.manifest.statement import (
    BuildFacts,
    BuildRecord,
    build_statement,
    builder_id,
    canonical_json,
    manifest_id_of,
)
from imagekit.manifest.store import Store
from imagekit.manifest.vuln import VULN_BUNDLE_SUFFIX, VULN_SUFFIX, vuln_sha256, vuln_statement
from imagekit.plan import CacheLookup, PreviousSettings, spec_hash, target_settings
from imagekit.spec import LoadedSpec
from imagekit.timefmt import iso_utc


class LayerRef(Protocol):
    """Anything with a layer name and hash (plan.LayerPlan fits)."""

    @property
    def name(self) -> str: ...

    @property
    def hash(self) -> str: ...


@dataclass(frozen=True)
class Recorded:
    """Where a build's manifest went and what signed it."""

    id: str
    location: str
    passed: bool
    key_ref: str
    keyid: str
    key_created: Path | None = None
    trusted: bool | None = None
    sbom_location: str | None = None
    store: Store | None = None


def _iso(t: datetime | str) -> str:
    text = t if isinstance(t, str) else iso_utc(t)
    if not is_rfc3339(text):
        # `manifest verify` refuses such a record, so signing one would only store something unusable
        raise ValueError(f"record_build: time {text!r} is not RFC 3339 (e.g. 2026-11-21T06:30:00Z)")
    return text


@dataclass(frozen=True)
class GitSource:
    """The commit a build came from, and where anyone can fetch it."""

    commit: str
    remote: str
    toplevel: Path
    dirty: bool = False  # the work tree differs from the commit: HEAD alone does not name what was built

    @property
    def uri(self) -> str:
        """`git+<remote URL>` (credentials stripped), else `git+file://<work tree>`."""
        return f"git+{self.remote}" if self.remote else "git+" + self.toplevel.as_uri()

    def file_uri(self, path: Path) -> str | None:
        """`git+<remote>@<commit>#<path>` for a file inside the work tree, when the tree has a remote."""
        try:
            rel = path.resolve().relative_to(self.toplevel.resolve()).as_posix()
        except ValueError:
            return None
        return f"{self.uri}@{self.commit}#{rel}" if self.remote else None


def _strip_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    if not parts.scheme and ":" in url and "@" in url.split(":", 1)[0]:
        # scp-like git@host:org/repo.git: the user name is no secret, but it is not a URI either
        host_part, path = url.split(":", 1)
        return f"ssh://{host_part}/{path}"
    return url


def git_source(root: Path, store: str = "") -> GitSource | None:
    """The commit and remote (credentials stripped) of the git work tree holding `root`; None outside git. A local
    store (`store`, relative to `root`) is imagekit's own output: new records there leave the tree clean."""
    from imagekit.errors import ImagekitError
    from imagekit.runners.process import capture

    def git(*args: str) -> str | None:
        try:
            res = capture(["git", "-C", str(root), *args], timeout=10)
        except (ImagekitError, OSError):  # git missing, or it did not answer (CommandTimeout)
            # a build outside git (or without git installed) is still recorded, just without a commit
            return None
        return res.output.strip() if res.ok else None

    sha = git("rev-parse", "HEAD") or ""
    if len(sha) != 40:
        return None
    top = git("rev-parse", "--show-toplevel") or str(root)
    remotes = (git("remote") or "").split()
    remote = ""
    if remotes:
        name = "origin" if "origin" in remotes else remotes[0]
        remote = _strip_credentials(git("remote", "get-url", name) or "")
    # tracked changes and untracked files (what `copy:` would take), not ignored ones nor imagekit's own work
    # folders (reports, staged wheels); unknown counts as dirty
    spec = [":(top,exclude,glob)**/.imagekit/**"]
    if store and "://" not in store:
        spec.append(f":(exclude){(root / store).resolve()}")
    status = git("status", "--porcelain", "--", *spec)
    return GitSource(sha, remote, Path(top), dirty=status is None or bool(status))


def _model_uri(loaded: LoadedSpec, src: str, is_remote: bool, git: GitSource | None) -> str:
    if is_remote:
        return src
    path = loaded.local(src)
    return (git.file_uri(path) if git else None) or path.resolve().as_uri()


def _report_dict(report: Any) -> dict[str, Any] | None:
    """The report as plain JSON data: a mapping, a pydantic model, or the path of the report JSON file."""
    if report is None:
        return None
    if isinstance(report, str | Path):
        try:
            # imagekit's own report, as big as the probe it embeds allows (Report.to_json keeps it under this)
            text = read_text(Path(report), what="verification report", limit=MAX_RECORD_BYTES)
            doc = load_json(text, limit=MAX_RECORD_BYTES)
        except FileNotFoundError:
            raise StoreError(f"cannot read the verification report {report}: it does not exist") from None
        except JsonInputError as exc:
            raise StoreError(f"cannot read the verification report {report}: {exc}") from None
    elif hasattr(report, "model_dump"):
        doc = report.model_dump(mode="json", by_alias=True)
    else:
        doc = json.loads(json.dumps(report, default=str))
    if not isinstance(doc, dict):
        raise StoreError(f"the verification report is a {type(doc).__name__}, expected a JSON object")
    return doc


def _report_passed(report: Mapping[str, Any] | None, failure: str | None) -> tuple[bool, list[str]]:
    failures: list[str] = [failure] if failure else []
    if report is None:
        return False, bound_lines(failures) or ["not verified"]
    listed = report.get("failures")
    if isinstance(listed, list):
        failures += [str(f) for f in listed]
    flag = report.get("passed", report.get("ok"))
    # bounded as the report bounds them (Report.write): the record's readers take at most MAX_RECORD_BYTES
    return (not failures and flag is not False), bound_lines(failures, limit=MAX_LINES + 2)


def record_build(
    loaded: LoadedSpec,
    image: str,
    target: str,
    layers: Sequence[LayerRef] | Sequence[tuple[str, str]],
    *,
    started: datetime | str,
    finished: datetime | str,
    image_ref: str | None = None,
    image_digest: str | None = None,
    amis: Sequence[Mapping[str, Any]] = (),
    base: str | None = None,
    base_image_id: str | None = None,
    base_recipe: str | None = None,
    report: Mapping[str, Any] | Path | Any = None,
    failure: str | None = None,
    passed: bool | None = None,
    builders: Mapping[str, str] | None = None,
    rehearsal: bool = False,
    size_bytes: int | None = None,
    inputs: Mapping[str, str] | None = None,
    key: str | None = None,
    store: Store | None = None,
    reporter: Reporter = silent,
    tags: Sequence[str] = (),
    vuln: Mapping[str, Any] | None = None,
    model_signatures: Mapping[str, Mapping[str, str]] | None = None,
) -> Recorded:
    """Sign a build's in-toto statement with the spec's key (or the default one, created on first use) and store it."""
    pairs = [(x[0], x[1]) if isinstance(x, tuple) else (x.name, x.hash) for x in layers]
    # accept the digest alone ("sha256:..."), inside a reference ("repo@sha256:..."), or only in image_ref
    if image_digest and "@" in image_digest:
        image_digest = image_digest.split("@", 1)[1]
    if image_ref and not image_digest and "@sha256:" in image_ref:
        image_digest = image_ref.split("@", 1)[1]
    if not pairs:
        raise ValueError("record_build needs the image's layers (name, hash), root first")
    report = _report_dict(report)
    ok, failures = _report_passed(report, failure)
    if passed is not None:
        ok = passed and not failure
    from imagekit.digests import DigestCache, real_digest

    cache = DigestCache()
    collected: dict[str, str] = dict(inputs or {})
    if inputs is None:
        from imagekit.plan import layer_inputs

        for name, layer in loaded.chain(image):
            collected.update(layer_inputs(loaded, name, layer, cache))
    input_digests: dict[str, dict[str, str]] = {}
    for k in collected:
        kind, _, rel = k.partition(":")
        if kind != "model" and loaded.local(rel).exists():
            input_digests[k] = real_digest(loaded.local(rel), cache)
    git = git_source(loaded.root, loaded.spec.store)
    signed = model_signatures or {}
    models = [
        {"name": m.dest, "src": m.src, "sha256": m.sha256, "uri": _model_uri(loaded, m.src, m.is_remote, git)}
        | {k: signed[m.dest][k] for k in ("signer", "signature_sha256") if k in signed.get(m.dest, {})}
        for _, layer in loaded.chain(image)
        for m in layer.models
    ]
    signer, created = load_signer(key or loaded.spec.signing.key, base=loaded.root)
    if created:
        reporter(Event("info", f"created a signing key at {created} (public key beside it); keep it private"))
    spec_path = loaded.path.name
    facts = BuildFacts(
        image=image,
        target=target,
        spec_path=spec_path,
        spec_sha256=spec_hash(loaded),
        layers=pairs,
        started=_iso(started),
        finished=_iso(finished),
        builder={"imagekit": __version__, **dict(builders or {})},
        image_ref=image_ref,
        image_digest=image_digest,
        amis=list(amis),
        base=base,
        base_image_id=base_image_id,
        base_recipe=base_recipe,
        models=models,
        inputs=collected,
        input_digests=input_digests,
        git_commit=git.commit if git else None,
        git_uri=git.uri if git else None,
        git_dirty=git.dirty if git else False,
        builder_id=builder_id(socket.gethostname(), signer.keyid),
        report=report,
        passed=ok,
        failures=failures,
        rehearsal=rehearsal,
        size_bytes=size_bytes,
        settings=target_settings(loaded, target),
        tags=tuple(tags),
        vuln_sha256=vuln_sha256(vuln) if vuln is not None else None,
    )
    sbom_envelope = None
    pip, dpkg, os_info = inventory(report)
    if pip or dpkg:
        # the SBOM of what was verified, signed over the same subjects and bound to the record by its digest
        subjects = build_statement(facts)["subject"]
        bom = cyclonedx_sbom(image, subjects, pip, dpkg, os_info, tool_version=__version__, timestamp=facts.finished)
        facts = replace(facts, sbom_sha256=bom_sha256(bom))
        sbom_envelope = sign_envelope(canonical_json(sbom_statement(subjects, bom)), signer)
    # the scan (cosign's vuln predicate), signed over the same subjects, bound by its digest like the SBOM
    vuln_envelope = (
        sign_envelope(canonical_json(vuln_statement(build_statement(facts)["subject"], vuln)), signer)
        if vuln is not None
        else None
    )
    payload = canonical_json(build_statement(facts))
    envelope = sign_envelope(payload, signer)
    mid = manifest_id_of(payload)
    store = store or spec_store(loaded)
    # the readers refuse an object over MAX_RECORD_BYTES: never sign and store one they would refuse
    sizes = {"the record": len(envelope_bytes(envelope))}
    if sbom_envelope is not None:
        sizes["its SBOM"] = len(envelope_bytes(sbom_envelope))
    over = [f"{what} is {n} bytes" for what, n in sizes.items() if n > MAX_RECORD_BYTES]
    if over:
        raise RecordTooBig(f"{image}: {', '.join(over)}; readers take at most {MAX_RECORD_BYTES} bytes: nothing stored")
    sbom_location = None
    if sbom_envelope is not None:
        # before the record: a record that names an SBOM never lies in the store without it
        sbom_location = store.put_sidecar(image, mid, SBOM_SUFFIX, envelope_bytes(sbom_envelope))
        store.put_sidecar(image, mid, SBOM_BUNDLE_SUFFIX, bundle_bytes(sigstore_bundle(sbom_envelope)))
    if vuln_envelope is not None:
        store.put_sidecar(image, mid, VULN_SUFFIX, envelope_bytes(vuln_envelope))
        store.put_sidecar(image, mid, VULN_BUNDLE_SUFFIX, bundle_bytes(sigstore_bundle(vuln_envelope)))
    location = store.put_manifest(image, mid, envelope_bytes(envelope))
    # the same envelope as a Sigstore bundle v0.3, for @sigstore/verify and `cosign … --bundle`
    store.put_sidecar(image, mid, BUNDLE_SUFFIX, bundle_bytes(sigstore_bundle(envelope)))
    trusted: bool | None
    try:
        trusted = signer.keyid in {t.keyid for t in resolve_trust(loaded).keys}
    except SignatureError:
        trusted = None
    if trusted is False:
        reporter(Event("warn", f"key {signer.ref} is not in the trust file; `manifest verify` will reject {mid}"))
    reporter(Event("done", f"manifest {mid} ({'verified' if ok else 'FAILED verification'}) -> {location}", image))
    return Recorded(mid, location, ok, signer.ref, signer.keyid, created, trusted, sbom_location, store)


class RecordTooBig(ImagekitError):
    """A record (or its SBOM) is over the size every reader refuses: a failed check, not a record."""

    exit_code = 1


def verified_builds(loaded: LoadedSpec, *, store: Store | None = None, rehearsal: bool = False) -> list[BuildRecord]:
    """The store's signed, verified, not revoked builds, oldest first (rehearsal ones only when asked).

    Nothing counts as verified without a trusted key; an unreachable store or an altered revocation log raises,
    so a plan fails loudly rather than showing every layer stale.
    """
    try:
        trust = resolve_trust(loaded)
    except SignatureError:
        return []
    out = []
    for e in Ledger(store or spec_store(loaded), trust).entries(with_channels=False):
        b = e.build
        if b is None or e.revoked or not b.passed or (b.rehearsal and not rehearsal):
            continue
        out.append(b)
    return out


def lookup_from(builds: Sequence[BuildRecord]) -> CacheLookup:
    """A plan lookup over verified builds: a layer hash is cached by the newest build of that target holding it."""
    index: dict[tuple[str, str], str] = {}
    for b in builds:  # oldest first, so the newest wins
        for _, h in b.layers:
            index[(b.target, h)] = b.id

    def lookup(_image: str, target: str, _layer: str, digest: str) -> str | None:
        hit = index.get((target, digest))
        return f"verified build {hit}" if hit else None

    return lookup


def settings_from(builds: Sequence[BuildRecord]) -> PreviousSettings:
    """A plan's `previous`: the target settings the newest verified build of (image, target) recorded."""
    index: dict[tuple[str, str], dict[str, str]] = {}
    for b in builds:  # oldest first, so the newest wins
        recorded = b.settings
        if recorded is not None:
            index[(b.image, b.target)] = recorded

    def previous(image: str, target: str) -> Mapping[str, str] | None:
        return index.get((image, target))

    return previous


def revoked_layers(
    loaded: LoadedSpec, *, store: Store | None = None, builds: Sequence[BuildRecord] | None = None
) -> dict[str, str]:
    """Layer hashes that a revocation covers and no verified build made after it holds: hash -> why.

    Nightly rebuilds these from scratch and a build never reuses their image or AMI; once one is rebuilt and
    verified, the hash is good again.
    """
    try:
        ledger = Ledger(store or spec_store(loaded), resolve_trust(loaded))
        revocations = ledger.revocations
    except SignatureError:
        return {}
    good = builds if builds is not None else verified_builds(loaded, store=store)
    out: dict[str, str] = {}
    for digest, rec in revocations.hashes.items():
        when = str(rec.doc.get("when", ""))
        if not any(b.created > when and any(h == digest for _, h in b.layers) for b in good):
            out[digest] = f"revoked with build {rec.manifest} {rec.describe()}"
    return out


def store_lookup(loaded: LoadedSpec, *, store: Store | None = None) -> CacheLookup:
    """A plan lookup: cached when the store holds a verified, signed, not revoked build with that layer hash."""
    inner: CacheLookup | None = None

    def lookup(image: str, target: str, layer: str, digest: str) -> str | None:
        nonlocal inner
        if inner is None:  # read the store only when a plan asks
            inner = lookup_from(verified_builds(loaded, store=store))
        return inner(image, target, layer, digest)

    return lookup


def latest_verified(loaded: LoadedSpec, image: str, target: str, *, store: Store | None = None) -> BuildRecord | None:
    """The newest signed, verified, not revoked, non-rehearsal build of an image for a target (budgets, nightly)."""
    try:
        trust = resolve_trust(loaded)
    except SignatureError:
        return None
    found = None
    for e in Ledger(store or spec_store(loaded), trust).entries(image, with_channels=False):
        b = e.build
        if b is not None and b.target == target and b.passed and not b.rehearsal and not e.revoked:
            found = b  # entries are oldest first
    return found
