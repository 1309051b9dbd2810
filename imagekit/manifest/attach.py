"""Attestations beside the image at its registry, where `cosign verify-attestation` and admission controllers look.

cosign's layout (specs/ATTESTATION_SPEC.md in sigstore/cosign): the tag `sha256-<image digest hex>.att` in the
image's repository holds an OCI image manifest; each layer is one DSSE envelope (media type
`application/vnd.dsse.envelope.v1+json`, annotations `predicateType` and an empty cosign signature annotation); the
config is the empty image config listing the layers as its diff_ids. Attaching again keeps the layers already
there and adds the new ones (the same envelope is never added twice).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from imagekit.errors import StoreError
from imagekit.runners.registry import OCI_MANIFEST, Registry

DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
ZERO_TIME = "0001-01-01T00:00:00Z"


def att_tag(digest: str) -> str:
    """The tag cosign reads attestations of an image from: sha256-<hex>.att."""
    algo, _, hexdigest = digest.partition(":")
    return f"{algo}-{hexdigest}.att"


@dataclass(frozen=True)
class Attached:
    """Where the attestations went."""

    reference: str
    tag: str
    manifest_digest: str
    layers: list[str]
    added: list[str]


def _config(layer_digests: list[str]) -> bytes:
    # the same shape go-containerregistry gives cosign's empty image with layers appended
    doc = {
        "architecture": "",
        "config": {},
        "created": ZERO_TIME,
        "history": [{"created": ZERO_TIME} for _ in layer_digests],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def attach(registry: Registry, repo: str, digest: str, envelopes: Sequence[tuple[bytes, str]]) -> Attached:
    """Push (envelope bytes, predicateType) pairs as layers of `<repo>:sha256-<hex>.att`, keeping what is there."""
    served = registry.manifest_digest(repo, digest)
    if served is None:
        raise StoreError(
            f"registry {registry.host} does not serve {repo}@{digest}: attestations go beside the image they name "
            f"(push it first, e.g. `imagekit build --push {registry.host}/{repo}`)"
        )
    tag = att_tag(digest)
    existing = registry.get_manifest(repo, tag)
    layers: list[dict[str, Any]] = list(existing.get("layers", [])) if existing else []
    have = {str(layer.get("digest")) for layer in layers}
    added = []
    for data, predicate_type in envelopes:
        annotations = {COSIGN_SIGNATURE_ANNOTATION: "", "predicateType": predicate_type}
        desc = registry.push_blob(repo, data, DSSE_MEDIA_TYPE, annotations)
        if desc.digest not in have:
            layers.append(desc.to_json())
            have.add(desc.digest)
            added.append(desc.digest)
    digests = [str(layer["digest"]) for layer in layers]
    config = registry.push_blob(repo, _config(digests), OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(), "layers": layers}
    stored = registry.put_manifest(repo, tag, manifest)
    return Attached(f"{registry.host}/{repo}:{tag}", tag, stored, digests, added)


def read_attestations(registry: Registry, repo: str, digest: str) -> list[tuple[dict[str, str], bytes]]:
    """(layer annotations, envelope bytes) of every attestation attached to repo@digest."""
    manifest = registry.get_manifest(repo, att_tag(digest))
    if manifest is None:
        return []
    out = []
    for layer in manifest.get("layers", []):
        if layer.get("mediaType") == DSSE_MEDIA_TYPE:
            out.append((dict(layer.get("annotations") or {}), registry.get_blob(repo, str(layer["digest"]))))
    return out
