"""The in-toto Statement v1 with a SLSA provenance v1 predicate that records one build, and a reader for it."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imagekit.errors import SignatureError
from imagekit.manifest.dsse import loads_strict
from imagekit.manifest.rules import check_statement

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://imagekit.dev/build/v1"
BUILDER_ID = "https://imagekit.dev/builder/v1"
REPORT_NAME = "verification-report"
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


def oci_subject(image_ref: str, digest: str) -> dict[str, Any]:
    """`oci:<repo>@sha256:<digest>` for a container image."""
    hexdigest = digest.removeprefix("sha256:")
    if len(hexdigest) != 64:
        raise ValueError(f"image digest {digest!r} is not a sha256 digest")
    return {"name": f"oci:{repository_of(image_ref)}@sha256:{hexdigest}", "digest": {"sha256": hexdigest}}


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
    models: Sequence[Mapping[str, str]] = ()
    inputs: Mapping[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    report: Mapping[str, Any] | None = None
    passed: bool = False
    failures: Sequence[str] = ()
    rehearsal: bool = False
    size_bytes: int | None = None


def build_statement(f: BuildFacts) -> dict[str, Any]:
    """The in-toto Statement v1 (SLSA provenance v1 predicate) for one build."""
    subjects: list[dict[str, Any]] = []
    if f.image_ref and f.image_digest:
        subjects.append(oci_subject(f.image_ref, f.image_digest))
    subjects.extend(ami_subject(a) for a in f.amis)
    subjects.extend({"name": m["name"], "digest": {"sha256": m["sha256"]}} for m in f.models)
    if not subjects:
        raise ValueError("a build record needs at least one subject (an image digest, an AMI or a model file)")

    deps: list[dict[str, Any]] = []
    if f.base:
        if f.base.startswith("ami-") or f.base.startswith("aws:"):
            deps.append({"name": "base", "uri": f.base if f.base.startswith("aws:") else f"aws:ami:{f.base}"})
        else:
            dep: dict[str, Any] = {"name": "base", "uri": f"oci:{f.base}"}
            if "@sha256:" in f.base:
                dep["digest"] = {"sha256": f.base.split("@sha256:", 1)[1]}
            deps.append(dep)
    for key, digest in sorted(f.inputs.items()):
        kind, _, rel = key.partition(":")
        if kind == "model":
            continue  # weights are subjects (and listed below with their destination)
        deps.append({"name": f"{kind}:{rel}", "digest": {"sha256": digest}})
    deps.extend(
        {"name": f"model:{m['name']}", "uri": m.get("src", m["name"]), "digest": {"sha256": m["sha256"]}}
        for m in f.models
    )
    if f.git_commit:
        deps.append({"name": "git", "uri": "git+file:.", "digest": {"gitCommit": f.git_commit}})

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
                },
                "internalParameters": {"layers": [{"name": n, "hash": h} for n, h in f.layers]},
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": dict(sorted(f.builder.items()))},
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
        """Model file name -> sha256."""
        return {
            str(s["name"]): str(s.get("digest", {}).get("sha256", ""))
            for s in self.subjects
            if not str(s.get("name")).startswith(("oci:", "aws:"))
        }

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
        doc = json.loads(raw)
        return doc if isinstance(doc, dict) else None

    def artifact(self) -> dict[str, Any]:
        """What deploy tools need: the image digest reference and/or AMI ids per region."""
        out: dict[str, Any] = {}
        if self.oci:
            out["image"] = self.oci
        if self.amis:
            out["amis"] = self.amis
        return out


def parse_statement(manifest_id: str, payload: bytes, *, strict: bool = True) -> BuildRecord:
    """Parse a payload as an imagekit build statement; SignatureError when it is not one (or, strict, breaks a rule)."""
    try:
        doc = loads_strict(payload) if strict else json.loads(payload)
    except SignatureError as exc:
        raise SignatureError(f"manifest {manifest_id}: payload: {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureError(f"manifest {manifest_id}: payload is not JSON ({exc})") from None
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
