"""The SBOM of what was verified: CycloneDX 1.6 JSON from the probe's pip and dpkg inventory of the booted image.

It is signed as its own in-toto statement (predicateType https://cyclonedx.org/bom) over the same subjects as the
provenance, stored beside it as `<id>.sbom.dsse.json`, and bound to it by the sha256 of the document's canonical
JSON (the provenance's `sbom` byproduct).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from imagekit.errors import SignatureError
from imagekit.manifest.statement import STATEMENT_TYPE, canonical_json, sha256_hex

SBOM_PREDICATE_TYPE = "https://cyclonedx.org/bom"
SBOM_SUFFIX = ".sbom.dsse.json"
SBOM_BUNDLE_SUFFIX = ".sbom.sigstore.json"
# a fixed namespace: the same subjects give the same serial number, so an SBOM is reproducible
SERIAL_NAMESPACE = uuid.UUID("6f1f3b0e-5c1a-4b8e-9a57-1d2b3c4d5e6f")


def _packages(probe: Mapping[str, Any], section: str) -> dict[str, str]:
    value = probe.get(section)
    pkgs = value.get("packages") if isinstance(value, dict) else None
    return {str(k): str(v) for k, v in pkgs.items()} if isinstance(pkgs, dict) else {}


def inventory(report: Mapping[str, Any] | None) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """(pip, dpkg, os-release) from a verification report's probe; empty when the probe listed nothing."""
    probe = (report or {}).get("probe")
    if not isinstance(probe, dict):
        return {}, {}, {}
    os_info = probe.get("os") if isinstance(probe.get("os"), dict) else {}
    return _packages(probe, "pip"), _packages(probe, "dpkg"), dict(os_info or {})


def _pypi_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def cyclonedx_sbom(
    image: str,
    subjects: Sequence[Mapping[str, Any]],
    pip: Mapping[str, str],
    dpkg: Mapping[str, str],
    os_info: Mapping[str, Any],
    *,
    tool_version: str,
    timestamp: str,
) -> dict[str, Any]:
    """A CycloneDX 1.6 document (as JSON data) listing the image's Python and Debian packages with purls."""
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    distro = str(os_info.get("id") or "debian")
    version_id = str(os_info.get("version_id") or "")
    qualifiers = {"distro": f"{distro}-{version_id}"} if version_id else {}
    subject: Mapping[str, Any] = subjects[0] if subjects else {"name": image, "digest": {}}
    digest = str((subject.get("digest") or {}).get("sha256", ""))
    bom = Bom(serial_number=uuid.uuid5(SERIAL_NAMESPACE, canonical_json(list(subjects)).decode()))
    bom.metadata.timestamp = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    bom.metadata.component = Component(
        name=image, type=ComponentType.CONTAINER, version=f"sha256:{digest}" if digest else None,
        bom_ref=str(subject.get("name", image)), description=str(subject.get("name", "")),
    )  # fmt: skip
    bom.metadata.tools.components.add(Component(name="imagekit", version=tool_version, type=ComponentType.APPLICATION))
    if os_info.get("id"):
        bom.components.add(
            Component(
                name=distro,
                version=version_id or None,
                type=ComponentType.OPERATING_SYSTEM,
                bom_ref=f"os:{distro}@{version_id}",
            )
        )
    for name, version in sorted(dpkg.items()):
        purl = PackageURL("deb", distro, name, version, qualifiers or None)
        bom.components.add(Component(name=name, version=version, type=ComponentType.LIBRARY, purl=purl,
                                     bom_ref=purl.to_string()))  # fmt: skip
    for name, version in sorted(pip.items(), key=lambda kv: kv[0].lower()):
        purl = PackageURL("pypi", None, _pypi_name(name), version)
        bom.components.add(Component(name=name, version=version, type=ComponentType.LIBRARY, purl=purl,
                                     bom_ref=purl.to_string()))  # fmt: skip
    # the image contains every package: a complete (flat) dependency graph from the root component
    bom.register_dependency(bom.metadata.component, list(bom.components))
    doc = json.loads(JsonV1Dot6(bom).output_as_string())
    assert isinstance(doc, dict)
    return doc


def validate_cyclonedx(text: str) -> str | None:
    """The library's strict JSON schema check of a CycloneDX 1.6 document: None when valid, else the error."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    return None if error is None else str(error)


def sbom_statement(subjects: Sequence[Mapping[str, Any]], bom: Mapping[str, Any]) -> dict[str, Any]:
    """The in-toto statement that carries the SBOM, over the same subjects as the build's provenance."""
    return {"_type": STATEMENT_TYPE, "subject": [dict(s) for s in subjects], "predicateType": SBOM_PREDICATE_TYPE,
            "predicate": dict(bom)}  # fmt: skip


def bom_sha256(bom: Mapping[str, Any]) -> str:
    """What the provenance's `sbom` byproduct binds: sha256 of the document's canonical JSON."""
    return sha256_hex(canonical_json(bom))


def check_sbom_statement(mid: str, doc: Any, subjects: list[dict[str, Any]], want: str | None) -> dict[str, Any]:
    """The SBOM statement beside manifest mid must be one, over the same subjects, and match the signed digest."""
    rule = "(rule: SBOM matches its signed digest)"
    if (
        not isinstance(doc, dict)
        or doc.get("_type") != STATEMENT_TYPE
        or doc.get("predicateType") != (SBOM_PREDICATE_TYPE)
    ):
        raise SignatureError(f"manifest {mid}: the SBOM beside it is not a {SBOM_PREDICATE_TYPE} statement {rule}")
    if doc.get("subject") != subjects:
        raise SignatureError(f"manifest {mid}: the SBOM beside it names other subjects {rule}")
    bom = doc.get("predicate")
    if not isinstance(bom, dict) or want is None or bom_sha256(bom) != want:
        raise SignatureError(f"manifest {mid}: the SBOM beside it does not hash to the digest the record signed {rule}")
    return bom


def sbom_packages(bom: Mapping[str, Any]) -> dict[str, str]:
    """`pip.<name>` / `dpkg.<name>` -> version from an SBOM's purls (what `manifest diff` compares)."""
    from packageurl import PackageURL

    out: dict[str, str] = {}
    for comp in bom.get("components") or []:
        purl = comp.get("purl") if isinstance(comp, dict) else None
        if not purl:
            continue
        p = PackageURL.from_string(str(purl))
        kind = {"pypi": "pip", "deb": "dpkg"}.get(p.type, p.type)
        out[f"{kind}.{comp.get('name', p.name)}"] = str(p.version or comp.get("version") or "")
    return out
