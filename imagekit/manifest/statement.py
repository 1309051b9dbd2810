"""The in-toto Statement v1 with a SLSA provenance v1 predicate that records one build, and a reader for it."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from imagekit.errors import SignatureError
from imagekit.inputs import MAX_RECORD_BYTES, JsonInputError, load_json
from imagekit.manifest.dsse import loads_strict
from imagekit.manifest.rules import check_statement

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
# docs/build-type-v1.md describes the parameters this build type records (the URI's last segment names the page)
BUILD_TYPE = "https://imagekit.dev/docs/build-type-v1"
BUILDER_ID = "https://imagekit.dev/builder/v1"
LOCAL_IMAGE_PREFIX = "docker-image-id:"
LOCAL_IMAGE_NOTE = "the local Docker image ID (config digest), not a registry manifest digest: push for a pullable one"
REPORT_NAME = "verification-report"
SBOM_NAME = "sbom"
SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"
VULN_NAME = "vulnerability-scan"
STATUS_NAME = "imagekit-status"


def canonical_json(doc: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no whitespace, UTF-8): what digests are taken over."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """sha256 hex digest."""
    return hashlib.sha256(data).hexdigest()


def ami_record(ami: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical record of an AMI that its subject digest covers: id, region, account, snapshot ids."""
    return {
        "id": str(ami["id"]),
        "region": str(ami["region"]),
        "account": str(ami.get("account") or ""),
        "snapshot_ids": sorted(str(s) for s in ami.get("snapshot_ids") or ()),
    }


def ami_subject(ami: Mapping[str, Any]) -> dict[str, Any]:
    """`aws:<region>:<ami-id>` with sha256 over the AMI's canonical record."""
    rec = ami_record(ami)
    return {"name": f"aws:{rec['region']}:{rec['id']}", "digest": {"sha256": sha256_hex(canonical_json(rec))}}


def _hex(digest: str) -> str:
    hexdigest = digest.rsplit("@", 1)[-1].removeprefix("sha256:")
    if len(hexdigest) != 64:
        raise ValueError(f"image digest {digest!r} is not a sha256 digest")
    return hexdigest


def oci_subject(image_ref: str, digest: str) -> dict[str, Any]:
    """`oci:<registry>/<repo>@sha256:<manifest digest>` for an image a registry serves (its Docker-Content-Digest)."""
    hexdigest = _hex(digest)
    return {"name": f"oci:{repository_of(image_ref)}@sha256:{hexdigest}", "digest": {"sha256": hexdigest}}


def local_image_subject(image_ref: str, image_id: str) -> dict[str, Any]:
    """`docker-image-id:<ref>` for an image only this engine holds: named for what the digest is (its image ID)."""
    return {
        "name": f"{LOCAL_IMAGE_PREFIX}{image_ref}",
        "digest": {"sha256": _hex(image_id)},
        "annotations": {"digestOf": LOCAL_IMAGE_NOTE},
    }


def builder_id(host: str, keyid: str) -> str:
    """This installation: imagekit's builder URI with the host and the signing key's id."""
    return f"{BUILDER_ID}?host={quote(host, safe='')}&keyid=sha256:{keyid}"


def repository_of(ref: str) -> str:
    """The repository part of an image reference (no tag, no digest)."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref = ref[: len(ref) - len(last)] + last.split(":", 1)[0]
    return ref


@dataclass(frozen=True)
class BuildFacts:
    """Everything a build knows that goes into its statement (assembled by record_build)."""

    image: str
    target: str
    spec_path: str
    spec_sha256: str
    layers: Sequence[tuple[str, str]]
    started: str
    finished: str
    builder: Mapping[str, str]
    image_ref: str | None = None
    image_digest: str | None = None
    amis: Sequence[Mapping[str, Any]] = ()
    base: str | None = None
    base_image_id: str | None = None
    base_recipe: str | None = None
    models: Sequence[Mapping[str, str]] = ()
    inputs: Mapping[str, str] = field(default_factory=dict)
    input_digests: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    git_commit: str | None = None
    git_uri: str | None = None
    git_dirty: bool = False  # the work tree differed from git_commit (tracked changes or untracked files)
    builder_id: str = BUILDER_ID
    sbom_sha256: str | None = None
    vuln_sha256: str | None = None
    report: Mapping[str, Any] | None = None
    passed: bool = False
    failures: Sequence[str] = ()
    rehearsal: bool = False
    size_bytes: int | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    tags: Sequence[str] = ()  # release tags (--tag v1.5.0, --tag {git_sha}) the image was also tagged with


def _image_subject(f: BuildFacts) -> dict[str, Any] | None:
    if not (f.image_ref and f.image_digest):
        return None
    if "@sha256:" in f.image_ref:
        # pushed: the reference carries the registry's manifest digest, what a cluster pulls and cosign checks
        return oci_subject(f.image_ref, f.image_ref)
    return local_image_subject(f.image_ref, f.image_digest)


def _base_dependency(f: BuildFacts) -> dict[str, Any] | None:
    if not f.base:
        return None
    if f.base.startswith(("ami-", "aws:")):
        return {"name": "base", "uri": f.base if f.base.startswith("aws:") else f"aws:ami:{f.base}"}
    if f.base_recipe:
        # debootstrap -> docker import: the imported image's ID is the real digest; the recipe says how it was made
        dep: dict[str, Any] = {"name": "base", "annotations": {"source": "bootstrap", "localTag": f.base,
                                                               "recipeSha256": f.base_recipe}}  # fmt: skip
        if f.base_image_id:
            dep["digest"] = {"sha256": _hex(f.base_image_id)}
        return dep
    if "@sha256:" in f.base:
        dep = {"name": "base", "uri": f"oci:{f.base}", "digest": {"sha256": _hex(f.base)}}
    else:
        dep = {"name": "base", "annotations": {"localRef": f.base}}
        if f.base_image_id:
            dep["digest"] = {"sha256": _hex(f.base_image_id)}
            dep["annotations"]["digestOf"] = "the local Docker image ID (the base has no registry digest here)"
        else:
            dep["uri"] = f"oci:{f.base}"
    if f.base_image_id and "@sha256:" in f.base:
        dep["annotations"] = {"imageId": f.base_image_id}
    return dep


def build_statement(f: BuildFacts) -> dict[str, Any]:
    """The in-toto Statement v1 (SLSA provenance v1 predicate) for one build."""
    subjects: list[dict[str, Any]] = []
    image = _image_subject(f)
    if image:
        subjects.append(image)
    subjects.extend(ami_subject(a) for a in f.amis)
    if not subjects:
        raise ValueError("a build record needs a subject (an image digest or an AMI)")

    deps: list[dict[str, Any]] = []
    base = _base_dependency(f)
    if base:
        deps.append(base)
    for key, tree in sorted(f.inputs.items()):
        kind, _, rel = key.partition(":")
        if kind == "model":
            continue  # weights are listed below with their source and destination
        dep: dict[str, Any] = {"name": f"{kind}:{rel}", "annotations": {"imagekitTreeHash": tree}}
        real = f.input_digests.get(key)
        if real:
            # the file's sha256 or the folder's dirHash: digests anyone can recompute; imagekit's own is a note
            dep["digest"] = dict(real)
        deps.append(dep)
    for m in f.models:
        dep = {"name": f"model:{m['name']}", "digest": {"sha256": m["sha256"]}, "annotations": {"dest": m["name"]}}
        for key in ("signer", "signature_sha256"):  # a model-signing signature that verified before the build
            if m.get(key):
                dep["annotations"][key] = m[key]
        if m.get("uri"):
            dep["uri"] = m["uri"]
        deps.append(dep)
    if f.git_commit:
        # gitCommit stays the commit's hex; `dirty` says whether that commit alone names what was built
        deps.append({"name": "git", "uri": f.git_uri or "git+file:.", "digest": {"gitCommit": f.git_commit},
                     "annotations": {"dirty": f.git_dirty}})  # fmt: skip

    byproducts: list[dict[str, Any]] = [
        {
            "name": STATUS_NAME,
            "annotations": {
                "verification": {"passed": f.passed, "failures": list(f.failures)},
                "rehearsal": f.rehearsal,
                "image_ref": f.image_ref,
                "size_bytes": f.size_bytes,
            },
        }
    ]
    if f.report is not None:
        # embedded (so `manifest show` works offline) and bound by digest to the signed statement
        raw = canonical_json(f.report)
        byproducts.append(
            {
                "name": REPORT_NAME,
                "mediaType": "application/json",
                "digest": {"sha256": sha256_hex(raw)},
                "content": base64.b64encode(raw).decode("ascii"),
            }
        )
    if f.sbom_sha256:
        # the SBOM is its own signed statement beside this one; this binds the two by the document's digest
        byproducts.append({"name": SBOM_NAME, "mediaType": SBOM_MEDIA_TYPE, "digest": {"sha256": f.sbom_sha256}})
    if f.vuln_sha256:
        # the scan (cosign's vuln predicate) is its own signed statement beside this one, bound the same way
        byproducts.append({"name": VULN_NAME, "mediaType": "application/json", "digest": {"sha256": f.vuln_sha256}})
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "spec": {"path": f.spec_path, "sha256": f.spec_sha256},
                    "target": f.target,
                    "image": f.image,
                    "rehearsal": f.rehearsal,
                    # the target settings in the layer hashes, so a plan can name the one that changed
                    **({"settings": dict(sorted(f.settings.items()))} if f.settings else {}),
                    **({"tags": list(f.tags)} if f.tags else {}),
                },
                "internalParameters": {"layers": [{"name": n, "hash": h} for n, h in f.layers]},
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": f.builder_id, "version": dict(sorted(f.builder.items()))},
                "metadata": {"startedOn": f.started, "finishedOn": f.finished},
                "byproducts": byproducts,
            },
        },
    }


@dataclass(frozen=True)
class BuildRecord:
    """A parsed, signature-checked-or-not manifest statement, with the fields commands need."""

    id: str
    statement: dict[str, Any]

    @property
    def predicate(self) -> dict[str, Any]:
        """The SLSA predicate."""
        pred = self.statement.get("predicate")
        return pred if isinstance(pred, dict) else {}

    @property
    def params(self) -> dict[str, Any]:
        """externalParameters."""
        return dict(self.predicate.get("buildDefinition", {}).get("externalParameters", {}))

    @property
    def image(self) -> str:
        """The spec's image name."""
        return str(self.params.get("image", ""))

    @property
    def target(self) -> str:
        """docker or ami."""
        return str(self.params.get("target", ""))

    @property
    def settings(self) -> dict[str, str] | None:
        """The target settings the build's layer hashes cover (`aws.encrypted` -> "true"), None if not recorded."""
        raw = self.params.get("settings")
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else None

    @property
    def tags(self) -> list[str]:
        """The release tags recorded with the build (--tag), if any."""
        return [str(x) for x in self.params.get("tags") or []]

    @property
    def layers(self) -> list[tuple[str, str]]:
        """(name, hash) root first."""
        raw = self.predicate.get("buildDefinition", {}).get("internalParameters", {}).get("layers", [])
        return [(str(x["name"]), str(x["hash"])) for x in raw]

    @property
    def leaf_hash(self) -> str:
        """The leaf layer's hash."""
        return self.layers[-1][1] if self.layers else ""

    @property
    def created(self) -> str:
        """When the build finished (ISO 8601 UTC)."""
        return str(self.predicate.get("runDetails", {}).get("metadata", {}).get("finishedOn", ""))

    @property
    def started(self) -> str:
        """When the build started."""
        return str(self.predicate.get("runDetails", {}).get("metadata", {}).get("startedOn", ""))

    def _byproduct(self, name: str) -> dict[str, Any]:
        for bp in self.predicate.get("runDetails", {}).get("byproducts", []):
            if isinstance(bp, dict) and bp.get("name") == name:
                return bp
        return {}

    @property
    def status(self) -> dict[str, Any]:
        """imagekit's own annotations: verification outcome, rehearsal, image ref, size."""
        return dict(self._byproduct(STATUS_NAME).get("annotations", {}))

    @property
    def passed(self) -> bool:
        """True when boot-and-verify passed."""
        return self.status.get("verification", {}).get("passed") is True

    @property
    def failures(self) -> list[str]:
        """Why verification failed."""
        return [str(x) for x in self.status.get("verification", {}).get("failures", [])]

    @property
    def rehearsal(self) -> bool:
        """True for rehearsal builds (never promoted without --allow-rehearsal)."""
        return bool(self.status.get("rehearsal")) or bool(self.params.get("rehearsal"))

    @property
    def size_bytes(self) -> int | None:
        """Image size in bytes, when known."""
        size = self.status.get("size_bytes")
        return int(size) if isinstance(size, int) else None

    @property
    def subjects(self) -> list[dict[str, Any]]:
        """The statement's subjects."""
        return [s for s in self.statement.get("subject", []) if isinstance(s, dict)]

    @property
    def subject_names(self) -> list[str]:
        """Subject names."""
        return [str(s.get("name")) for s in self.subjects]

    @property
    def oci(self) -> str | None:
        """The image as repo@sha256:..., when the build made one."""
        for name in self.subject_names:
            if name.startswith("oci:"):
                return name[4:]
        return None

    @property
    def local_image(self) -> tuple[str, str] | None:
        """(reference, sha256:<image ID>) of an image that was not pushed (only its engine holds it)."""
        for s in self.subjects:
            name = str(s.get("name"))
            if name.startswith(LOCAL_IMAGE_PREFIX):
                return name[len(LOCAL_IMAGE_PREFIX) :], "sha256:" + str(s.get("digest", {}).get("sha256", ""))
        return None

    @property
    def dependencies(self) -> list[dict[str, Any]]:
        """resolvedDependencies."""
        deps = self.predicate.get("buildDefinition", {}).get("resolvedDependencies", [])
        return [d for d in deps if isinstance(d, dict)]

    @property
    def source(self) -> str | None:
        """The git commit built from, `<sha>-dirty` when the work tree had changes; None outside git."""
        dep = next((d for d in self.dependencies if d.get("name") == "git"), None)
        sha = str(((dep or {}).get("digest") or {}).get("gitCommit") or "")
        notes = (dep or {}).get("annotations")
        return (sha + ("-dirty" if isinstance(notes, dict) and notes.get("dirty") is True else "")) or None

    @property
    def sbom_sha256(self) -> str | None:
        """The sha256 of the CycloneDX document the SBOM statement beside this one must carry, when there is one."""
        value = self._byproduct(SBOM_NAME).get("digest", {}).get("sha256")
        return str(value) if value else None

    @property
    def vuln_sha256(self) -> str | None:
        """The sha256 of the scan predicate the vuln statement beside this one must carry, when there is one."""
        value = self._byproduct(VULN_NAME).get("digest", {}).get("sha256")
        return str(value) if value else None

    @property
    def amis(self) -> dict[str, str]:
        """region -> AMI id."""
        out = {}
        for name in self.subject_names:
            if name.startswith("aws:"):
                _, region, ami = name.split(":", 2)
                out[region] = ami
        return out

    @property
    def models(self) -> dict[str, str]:
        """Model file (destination) -> sha256: resolved dependencies `model:<dest>` (older records: subjects)."""
        out = {
            str(s["name"]): str(s.get("digest", {}).get("sha256", ""))
            for s in self.subjects
            if not str(s.get("name")).startswith(("oci:", "aws:", LOCAL_IMAGE_PREFIX))
        }
        for d in self.dependencies:
            name = str(d.get("name", ""))
            if name.startswith("model:"):
                out[name[len("model:") :]] = str(d.get("digest", {}).get("sha256", ""))
        return out

    @property
    def model_signers(self) -> dict[str, dict[str, str]]:
        """Model file (destination) -> signer key id and signature digest, for the signed ones."""
        out: dict[str, dict[str, str]] = {}
        for d in self.dependencies:
            notes = d.get("annotations") if isinstance(d.get("annotations"), dict) else {}
            name = str(d.get("name", ""))
            if name.startswith("model:") and isinstance(notes, dict) and notes.get("signer"):
                out[name[len("model:") :]] = {k: str(notes.get(k, "")) for k in ("signer", "signature_sha256")}
        return out

    @property
    def builder(self) -> dict[str, str]:
        """Tool versions the build used."""
        return dict(self.predicate.get("runDetails", {}).get("builder", {}).get("version", {}))

    def report(self) -> dict[str, Any] | None:
        """The embedded verification report, after checking it against its signed digest."""
        bp = self._byproduct(REPORT_NAME)
        if not bp:
            return None
        raw = base64.b64decode(str(bp.get("content", "")))
        if sha256_hex(raw) != bp.get("digest", {}).get("sha256"):
            raise SignatureError(f"manifest {self.id}: the embedded verification report does not match its digest")
        try:
            doc = load_json(raw, limit=MAX_RECORD_BYTES)  # inside a record the writer bounded
        except JsonInputError as exc:
            raise SignatureError(f"manifest {self.id}: the embedded verification report is unreadable: {exc}") from None
        return doc if isinstance(doc, dict) else None

    def artifact(self) -> dict[str, Any]:
        """What deploy tools need: the image digest reference and/or AMI ids per region."""
        out: dict[str, Any] = {}
        if self.oci:
            out["image"] = self.oci
        elif self.local_image:
            # not pullable: `docker run <image_id>` works on the engine that built it, nowhere else
            out["local_ref"], out["image_id"] = self.local_image
        if self.amis:
            out["amis"] = self.amis
        return out


def parse_statement(manifest_id: str, payload: bytes, *, strict: bool = True) -> BuildRecord:
    """Parse a payload as an imagekit build statement; SignatureError when it is not one (or, strict, breaks a rule)."""
    try:
        doc = loads_strict(payload) if strict else load_json(payload, limit=MAX_RECORD_BYTES)
    except SignatureError as exc:
        raise SignatureError(f"manifest {manifest_id}: payload: {exc}") from None
    except JsonInputError as exc:
        raise SignatureError(f"manifest {manifest_id}: payload is not readable JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_TYPE:
        raise SignatureError(f"manifest {manifest_id}: payload is not an in-toto Statement v1")
    if doc.get("predicateType") != PREDICATE_TYPE:
        raise SignatureError(f"manifest {manifest_id}: predicateType is {doc.get('predicateType')!r}")
    if strict:
        check_statement(manifest_id, doc)
    rec = BuildRecord(manifest_id, doc)
    try:
        if not rec.image or not rec.layers:
            raise SignatureError(f"manifest {manifest_id}: statement names no image or layers")
    except (KeyError, TypeError, AttributeError):
        raise SignatureError(f"manifest {manifest_id}: statement is malformed") from None
    return rec


def manifest_id_of(payload: bytes) -> str:
    """A manifest's id: the first 16 hex digits of the sha256 of its payload."""
    return sha256_hex(payload)[:16]
