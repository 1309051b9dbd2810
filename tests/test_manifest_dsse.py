"""DSSE: sign and verify with both key types, tampering of every byte, and an independent verifier."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from imagekit.errors import SignatureError
from imagekit.manifest.dsse import (
    INTOTO_PAYLOAD_TYPE,
    envelope_bytes,
    pae,
    parse_envelope,
    sign_envelope,
    verify_envelope,
)
from imagekit.manifest.keys import KeyType, keygen, load_file_signer, trusted_from_pem

PAYLOAD = json.dumps(
    {"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": "x", "digest": {"sha256": "ab" * 32}}]}
).encode()


@pytest.fixture(params=["ecdsa-p256", "ed25519"])
def keypair(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    kind: KeyType = request.param
    priv, pub = keygen(tmp_path / kind, kind)
    return load_file_signer(priv), [trusted_from_pem(pub)], pub


def test_round_trip(keypair) -> None:  # type: ignore[no-untyped-def]
    signer, trusted, _ = keypair
    env = sign_envelope(PAYLOAD, signer)
    assert env["payloadType"] == INTOTO_PAYLOAD_TYPE
    assert env["signatures"][0]["keyid"] == signer.keyid
    got = verify_envelope(parse_envelope(envelope_bytes(env)), trusted)
    assert got.payload == PAYLOAD and got.key.keyid == signer.keyid


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def test_every_flipped_byte_of_payload_and_signature_fails(keypair) -> None:  # type: ignore[no-untyped-def]
    signer, trusted, _ = keypair
    env = sign_envelope(PAYLOAD, signer)
    payload = base64.b64decode(env["payload"])
    sig = base64.b64decode(env["signatures"][0]["sig"])
    checked = 0
    for i in range(len(payload)):
        bad = copy.deepcopy(env)
        bad["payload"] = base64.b64encode(_flip(payload, i)).decode()
        with pytest.raises(SignatureError):
            verify_envelope(bad, trusted)
        checked += 1
    for i in range(len(sig)):
        bad = copy.deepcopy(env)
        bad["signatures"][0]["sig"] = base64.b64encode(_flip(sig, i)).decode()
        with pytest.raises(SignatureError):
            verify_envelope(bad, trusted)
        checked += 1
    assert checked == len(payload) + len(sig) > 100


def test_every_flipped_character_of_the_base64_text_fails(keypair) -> None:  # type: ignore[no-untyped-def]
    # non-canonical base64 (flipping unused trailing bits) must not slip through as "the same" bytes
    signer, trusted, _ = keypair
    env = sign_envelope(PAYLOAD, signer)
    for field in ("payload", "sig"):
        text = env["payload"] if field == "payload" else env["signatures"][0]["sig"]
        for i in range(len(text)):
            bad = copy.deepcopy(env)
            flipped = text[:i] + chr(ord(text[i]) ^ 0x01) + text[i + 1 :]
            if field == "payload":
                bad["payload"] = flipped
            else:
                bad["signatures"][0]["sig"] = flipped
            with pytest.raises(SignatureError):
                verify_envelope(bad, trusted)


def test_wrong_key_and_swapped_payload_type_fail(keypair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    signer, trusted, _ = keypair
    env = sign_envelope(PAYLOAD, signer)
    _, other_pub = keygen(tmp_path / "other")
    with pytest.raises(SignatureError, match="unknown key"):
        verify_envelope(env, [trusted_from_pem(other_pub)])
    swapped = dict(env, payloadType="application/json")
    with pytest.raises(SignatureError, match="payloadType"):
        verify_envelope(swapped, trusted)
    # signed under another type, relabelled as in-toto: PAE binds the type, so the signature fails
    other = sign_envelope(PAYLOAD, signer, payload_type="application/json")
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(dict(other, payloadType=INTOTO_PAYLOAD_TYPE), trusted)
    with pytest.raises(SignatureError, match="unsigned"):
        verify_envelope(dict(env, signatures=[]), trusted)


def test_pae_matches_the_dsse_spec_example() -> None:
    # the example from the DSSE protocol document
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_independent_verifier_accepts_imagekit_envelopes(keypair) -> None:  # type: ignore[no-untyped-def]
    """Verify with only `cryptography` and PAE written here, not imagekit's verifier."""
    signer, _, pub_path = keypair
    env = json.loads(envelope_bytes(sign_envelope(PAYLOAD, signer)))
    body = base64.b64decode(env["payload"])
    ptype = env["payloadType"].encode()
    message = b"DSSEv1 " + str(len(ptype)).encode() + b" " + ptype + b" " + str(len(body)).encode() + b" " + body
    sig = base64.b64decode(env["signatures"][0]["sig"])
    pub = serialization.load_pem_public_key(pub_path.read_bytes())
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert env["signatures"][0]["keyid"] == hashlib.sha256(der).hexdigest()
    if isinstance(pub, ed25519.Ed25519PublicKey):
        pub.verify(sig, message)
        with pytest.raises(InvalidSignature):
            pub.verify(sig, message + b" ")
    else:
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        pub.verify(sig, message, ec.ECDSA(hashes.SHA256()))
        with pytest.raises(InvalidSignature):
            pub.verify(sig, message + b" ", ec.ECDSA(hashes.SHA256()))
