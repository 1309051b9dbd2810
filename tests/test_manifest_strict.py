"""A strict `manifest verify`: records signed with the TRUSTED key (the real signing code) that still must fail.

A good signature over a nonsensical or ambiguous claim is refused with exit 1, and the message names the rule.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from manifest_helpers import fake_build, make_spec
from typer.testing import CliRunner

from imagekit.cli import app
from imagekit.manifest.dsse import envelope_bytes, envelope_payload, sign_envelope
from imagekit.manifest.keys import P256_ORDER, load_file_signer
from imagekit.manifest.ledger import spec_store
from imagekit.manifest.statement import canonical_json, manifest_id_of
from imagekit.spec import LoadedSpec

_cases = itertools.count()


def cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def spec(tmp_path: Path) -> tuple[LoadedSpec, dict[str, Any]]:
    loaded = make_spec(tmp_path)
    rec = fake_build(loaded, report={"passed": True, "failures": [], "torch": "2.5.1"})
    return loaded, json.loads(envelope_payload(Path(rec.location).read_bytes()))


def _store_signed(loaded: LoadedSpec, statement: dict[str, Any] | bytes, *, envelope: Any = None) -> str:
    """Sign with the spec's trusted key and put the envelope in the store under its (correct) id."""
    if isinstance(statement, dict):
        # each case its own payload (so its own id) beside the untouched record already in the store
        statement = copy.deepcopy(statement)
        statement["predicate"]["buildDefinition"]["externalParameters"]["case"] = next(_cases)
    payload = statement if isinstance(statement, bytes) else canonical_json(statement)
    signer = load_file_signer(loaded.root / "keys" / "imagekit.key")
    env = sign_envelope(payload, signer)
    data = envelope(env) if envelope else envelope_bytes(env)
    mid = manifest_id_of(payload)
    spec_store(loaded).put_manifest("app", mid, data)
    return mid


def _verify_fails(loaded: LoadedSpec, mid: str, rule: str) -> str:
    r = cli("manifest", "verify", mid, "-f", str(loaded.path))
    assert r.exit_code == 1, r.output
    assert f"(rule: {rule})" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output
    return str(r.stderr)


def test_the_untouched_record_verifies(spec: tuple[LoadedSpec, dict[str, Any]]) -> None:
    loaded, st = spec
    mid = _store_signed(loaded, st)  # re-signed as is: same payload, so the same id
    r = cli("manifest", "verify", mid, "-f", str(loaded.path))
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output


def test_embedded_report_that_does_not_match_its_digest(spec: tuple[LoadedSpec, dict[str, Any]]) -> None:
    loaded, st = spec
    bad = copy.deepcopy(st)
    rep = next(b for b in bad["predicate"]["runDetails"]["byproducts"] if b["name"] == "verification-report")
    rep["content"] = base64.b64encode(canonical_json({"passed": True, "torch": "9.9.9"})).decode()
    _verify_fails(loaded, _store_signed(loaded, bad), "embedded content matches its digest")


def test_statement_with_no_subject(spec: tuple[LoadedSpec, dict[str, Any]]) -> None:
    loaded, st = spec
    _verify_fails(loaded, _store_signed(loaded, dict(st, subject=[])), "at least one subject")


@pytest.mark.parametrize(
    "digest",
    [{"sha256": "zz"}, {"sha256": "AB" * 32}, {"sha256": "ab" * 31}, {"md5": "ab" * 16}, {}, "sha256:abc"],
)
def test_malformed_subject_digest(spec: tuple[LoadedSpec, dict[str, Any]], digest: Any) -> None:
    loaded, st = spec
    bad = copy.deepcopy(st)
    bad["subject"][0]["digest"] = digest
    _verify_fails(loaded, _store_signed(loaded, bad), "well-formed digests")


def test_malformed_dependency_digest(spec: tuple[LoadedSpec, dict[str, Any]]) -> None:
    loaded, st = spec
    bad = copy.deepcopy(st)
    bad["predicate"]["buildDefinition"]["resolvedDependencies"][0]["digest"] = {"sha256": "zz"}
    _verify_fails(loaded, _store_signed(loaded, bad), "well-formed digests")


@pytest.mark.parametrize("when", ["yesterday", "2026-11-21 01:00:00", "2026-13-40T01:00:00Z", "2026-11-21T01:00:00"])
def test_times_that_are_not_rfc3339(spec: tuple[LoadedSpec, dict[str, Any]], when: str) -> None:
    loaded, st = spec
    bad = copy.deepcopy(st)
    bad["predicate"]["runDetails"]["metadata"]["finishedOn"] = when
    _verify_fails(loaded, _store_signed(loaded, bad), "RFC 3339 times")


def test_duplicate_payload_key_first_forged_last_genuine(spec: tuple[LoadedSpec, dict[str, Any]]) -> None:
    loaded, st = spec
    forged = base64.b64encode(canonical_json(dict(st, subject=[{"name": "evil", "digest": {"sha256": "0" * 64}}])))

    def two_payloads(env: dict[str, Any]) -> bytes:
        # a parser that keeps the first key sees the forgery; json.loads (last wins) would see the signed one
        rest = json.dumps({k: v for k, v in env.items() if k != "payload"})[1:]
        return f'{{"payload": "{forged.decode()}", "payload": "{env["payload"]}", {rest}'.encode()

    mid = _store_signed(loaded, st, envelope=two_payloads)
    assert _verify_fails(loaded, mid, "no duplicate keys").count("'payload'") == 1


def test_duplicate_key_inside_the_payload(spec: tuple[LoadedSpec, dict[str, Any]]) -> None:
    loaded, st = spec
    text = canonical_json(st).decode()
    doubled = text.replace('"predicateType":', '"predicateType":"https://example.com/other","predicateType":', 1)
    _verify_fails(loaded, _store_signed(loaded, doubled.encode()), "no duplicate keys")


def test_unknown_envelope_fields(spec: tuple[LoadedSpec, dict[str, Any]]) -> None:
    loaded, st = spec
    top = _store_signed(loaded, st, envelope=lambda env: envelope_bytes(dict(env, comment="hi")))
    assert "comment" in _verify_fails(loaded, top, "DSSE fields only")


def test_unknown_signature_fields(spec: tuple[LoadedSpec, dict[str, Any]], tmp_path: Path) -> None:
    loaded, st = spec

    def extra(env: dict[str, Any]) -> bytes:
        env["signatures"][0]["cert"] = "x"
        return envelope_bytes(env)

    mid = _store_signed(
        loaded, dict(st, predicateType=st["predicateType"]) | {"subject": st["subject"] * 2}, envelope=extra
    )
    _verify_fails(loaded, mid, "DSSE fields only")


def test_non_canonical_base64(spec: tuple[LoadedSpec, dict[str, Any]]) -> None:
    loaded, st = spec
    padded = copy.deepcopy(st)
    # find a payload whose base64 ends in '==' so the last character carries 4 unused bits
    for i in range(3):
        padded["predicate"]["buildDefinition"]["externalParameters"]["pad"] = "x" * i
        if len(canonical_json(padded)) % 3 == 1:
            break
    assert len(canonical_json(padded)) % 3 == 1

    def unused_bits(env: dict[str, Any]) -> bytes:
        text = env["payload"]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        last = text[-3]
        env["payload"] = text[:-3] + alphabet[alphabet.index(last) + 1] + "=="
        assert base64.b64decode(env["payload"]) == base64.b64decode(text)  # same bytes, different text
        return envelope_bytes(env)

    _verify_fails(loaded, _store_signed(loaded, canonical_json(padded), envelope=unused_bits), "canonical base64")


def test_file_name_and_id_disagree(spec: tuple[LoadedSpec, dict[str, Any]], tmp_path: Path) -> None:
    loaded, st = spec
    mid = _store_signed(loaded, st)
    store = spec_store(loaded)
    genuine = store.read(store.manifest_key("app", mid))
    other = "0123456789abcdef"
    store.put_manifest("app", other, genuine)
    _verify_fails(loaded, other, "file name is the id")
    # the file alone too, when it is named like a stored record
    copied = tmp_path / f"{other}.intoto.json"
    copied.write_bytes(genuine)
    r = cli("manifest", "verify", str(copied), "--trust", str(loaded.root / "keys" / "imagekit.pub"))
    assert r.exit_code == 1 and "(rule: file name is the id)" in r.stderr
    renamed = tmp_path / "release.intoto.json"
    renamed.write_bytes(genuine)
    ok = cli("manifest", "verify", str(renamed), "--trust", str(loaded.root / "keys" / "imagekit.pub"))
    assert ok.exit_code == 0 and f"its id is {mid}" in ok.stderr


@pytest.mark.parametrize("keyid", ["", "not-this-key"])
def test_keyid_that_does_not_name_the_key_warns(spec: tuple[LoadedSpec, dict[str, Any]], keyid: str) -> None:
    loaded, st = spec

    def rename(env: dict[str, Any]) -> bytes:
        env["signatures"][0]["keyid"] = keyid
        return envelope_bytes(env)

    mid = _store_signed(loaded, st, envelope=rename)
    r = cli("manifest", "verify", mid, "-f", str(loaded.path))
    assert r.exit_code == 0, r.output
    assert "warning: the signature's keyid does not name the key that verified it" in r.stderr


def test_ecdsa_signatures_are_low_s(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    signer = load_file_signer(loaded.root / "keys" / "imagekit.key")
    for i in range(64):  # a random-S signer gives high S half the time: 64 draws all low by chance is 2^-64
        _r, s = decode_dss_signature(signer.sign(b"message %d" % i))
        assert s <= P256_ORDER // 2


def test_a_bundle_that_carries_another_envelope(spec: tuple[LoadedSpec, dict[str, Any]]) -> None:
    loaded, st = spec
    mid = _store_signed(loaded, st)
    other = _store_signed(loaded, st)
    store = spec_store(loaded)
    # the bundle of `other` put beside `mid`: both verify alone, but they are not the same claim
    from imagekit.manifest.bundle import BUNDLE_SUFFIX, bundle_bytes, sigstore_bundle

    env = json.loads(store.read(store.manifest_key("app", other)))
    store.put_sidecar("app", mid, BUNDLE_SUFFIX, bundle_bytes(sigstore_bundle(env)))
    _verify_fails(loaded, mid, "bundle matches envelope")


def test_a_record_in_the_previous_format_still_verifies(spec: tuple[LoadedSpec, dict[str, Any]]) -> None:
    loaded, st = spec
    old = copy.deepcopy(st)
    # before: the model file as a subject, a constant builder id and buildType, no bundle beside it
    old["subject"].append({"name": "/opt/models/tts.pt", "digest": {"sha256": "4" * 64}})
    old["predicate"]["buildDefinition"]["buildType"] = "https://imagekit.dev/build/v1"
    old["predicate"]["runDetails"]["builder"]["id"] = "https://imagekit.dev/builder/v1"
    mid = _store_signed(loaded, old)
    r = cli("manifest", "verify", mid, "-f", str(loaded.path))
    assert r.exit_code == 0, r.output
    assert "no Sigstore bundle beside" in r.stderr
    from imagekit.api.manifest import show_manifest

    assert show_manifest(loaded.root, mid)["models"] == {"/opt/models/tts.pt": "4" * 64}
