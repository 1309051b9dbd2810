"""Outside verifiers, none written here, accept a real record: securesystemslib's DSSE verifier, the in-toto
attestation Python bindings (statement and SLSA provenance v1 protos, no unknown field), and @sigstore/verify
(npm) on the Sigstore bundle beside the envelope. Each must also refuse a tampered copy."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from manifest_helpers import fake_build, make_spec
from test_manifest_format import make_repo, record

from imagekit.manifest.bundle import BUNDLE_MEDIA_TYPE
from imagekit.manifest.keys import load_public_pem


def _spki_keyid(pub: Path) -> str:
    der = load_public_pem(pub).public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _envelope(location: str) -> dict[str, Any]:
    return json.loads(Path(location).read_text())


def test_securesystemslib_verifies_the_envelope_with_the_spki_keyid(tmp_path: Path) -> None:
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import SSlibKey

    loaded = make_spec(tmp_path)
    rec = fake_build(loaded)
    pub = tmp_path / "keys" / "imagekit.pub"
    keyid = _spki_keyid(pub)
    assert rec.keyid == keyid
    # securesystemslib only tries keys whose keyid equals the signature's: so this also checks the keyid convention
    key = SSlibKey.from_crypto(load_public_pem(pub), keyid=keyid)  # type: ignore[arg-type]
    env = _envelope(rec.location)
    accepted = Envelope.from_dict(copy.deepcopy(env)).verify([key], 1)
    assert list(accepted) == [keyid]
    bad = copy.deepcopy(env)
    bad["payload"] = base64.b64encode(base64.b64decode(env["payload"]).replace(b'"app"', b'"xyz"')).decode()
    with pytest.raises(VerificationError):
        Envelope.from_dict(bad).verify([key], 1)


def test_in_toto_bindings_accept_statement_and_provenance(tmp_path: Path) -> None:
    import google.protobuf.json_format as pb_json
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    loaded = make_repo(tmp_path)  # with copy, requirements, weights and git: every kind of dependency
    _rec, st = record(loaded)
    # ParseDict without ignore_unknown_fields: a field the spec does not define is an error, not skipped
    stmt = Statement.copy_from_pb(pb_json.ParseDict(st, statement_pb2.Statement()))
    stmt.validate()
    prov = pb_json.ParseDict(st["predicate"], provenance_pb2.Provenance())
    assert prov.build_definition.build_type == st["predicate"]["buildDefinition"]["buildType"]
    assert prov.run_details.builder.id.startswith("https://imagekit.dev/builder/v1?host=")
    for rd in [*prov.build_definition.resolved_dependencies, *prov.run_details.byproducts]:
        ResourceDescriptor.copy_from_pb(rd).validate()
    uris = [d.uri for d in prov.build_definition.resolved_dependencies if d.uri]
    assert uris and all(":" in u.split("/", 1)[0] or u.startswith("git+https://") for u in uris)
    with pytest.raises(pb_json.ParseError):
        pb_json.ParseDict(dict(st, extra=1), statement_pb2.Statement())
    with pytest.raises(ValueError, match="subject"):
        Statement.copy_from_pb(pb_json.ParseDict(dict(st, subject=[]), statement_pb2.Statement())).validate()


def _node_verify(cmd: list[str], bundle: Path, pub: Path) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([*cmd, str(bundle), str(pub)], capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_sigstore_js_verifies_the_bundle_beside_the_envelope(tmp_path: Path, sigstore_js: list[str]) -> None:
    loaded = make_spec(tmp_path)
    rec = fake_build(loaded)
    bundle_path = Path(rec.location).with_name(f"{rec.id}.sigstore.json")
    bundle = json.loads(bundle_path.read_text())
    assert bundle["mediaType"] == BUNDLE_MEDIA_TYPE
    assert bundle["verificationMaterial"] == {"publicKey": {"hint": rec.keyid}, "tlogEntries": []}
    env = _envelope(rec.location)
    assert bundle["dsseEnvelope"] == env
    pub = tmp_path / "keys" / "imagekit.pub"
    rc, out = _node_verify(sigstore_js, bundle_path, pub)
    assert rc == 0 and out["ok"], out
    assert out["hint"] == rec.keyid and out["payloadType"] == "application/vnd.in-toto+json"
    assert out["subjects"][0]["name"].startswith("oci:localhost:5000/demo-app@sha256:")

    # tampered payload: refused by the outside verifier
    bad = copy.deepcopy(bundle)
    payload = base64.b64decode(env["payload"]).replace(b"localhost:5000", b"evil.example:5000")
    bad["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    bad_path = tmp_path / "bad.sigstore.json"
    bad_path.write_text(json.dumps(bad))
    rc, out = _node_verify(sigstore_js, bad_path, pub)
    assert rc == 1 and not out["ok"] and "signature" in out["error"].lower(), out
    # another key: not found under the hint
    other = make_spec(tmp_path / "other")
    rc, out = _node_verify(sigstore_js, bundle_path, other.root / "keys" / "imagekit.pub")
    assert rc == 1 and "key not found" in out["error"], out
