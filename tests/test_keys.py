"""Keys: keygen, file modes, passphrases, the default key, trust files, keyids, KMS through moto."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from imagekit.errors import SignatureError, UsageError
from imagekit.manifest import keys
from imagekit.manifest.dsse import sign_envelope, verify_envelope
from imagekit.manifest.keys import (
    TrustedKey,
    keygen,
    keyid_of,
    load_file_signer,
    load_signer,
    load_trust,
    trusted_from_pem,
)


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ed25519"])
def test_keygen_writes_0600_pkcs8_and_refuses_overwrite(tmp_path: Path, kind: keys.KeyType) -> None:
    priv, pub = keygen(tmp_path, kind)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert priv.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    signer = load_file_signer(priv)
    assert keys.key_kind(signer.public_key()) == kind
    before = priv.read_bytes()
    with pytest.raises(UsageError, match="refusing to overwrite"):
        keygen(tmp_path, kind)
    assert priv.read_bytes() == before


def test_keyid_is_sha256_of_der_spki(tmp_path: Path) -> None:
    _, pub = keygen(tmp_path)
    key = serialization.load_pem_public_key(pub.read_bytes())
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert trusted_from_pem(pub).keyid == hashlib.sha256(der).hexdigest() == keyid_of(key)  # type: ignore[arg-type]


def test_passphrase_encrypts_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEKIT_KEY_PASSPHRASE", "correct horse")
    priv, _ = keygen(tmp_path)
    assert "ENCRYPTED PRIVATE KEY" in priv.read_text()
    assert load_file_signer(priv).keyid
    monkeypatch.setenv("IMAGEKIT_KEY_PASSPHRASE", "wrong")
    with pytest.raises(SignatureError, match="could not be read"):
        load_file_signer(priv)
    monkeypatch.delenv("IMAGEKIT_KEY_PASSPHRASE")
    with pytest.raises(SignatureError, match="IMAGEKIT_KEY_PASSPHRASE"):
        load_file_signer(priv)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_signing_refuses_a_key_readable_by_others(tmp_path: Path, mode: int) -> None:
    priv, _ = keygen(tmp_path)
    os.chmod(priv, mode)
    with pytest.raises(SignatureError, match="chmod 600"):
        load_file_signer(priv)


def test_default_key_is_created_once_in_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    signer, created = load_signer(None)
    assert created == tmp_path / "cfg" / "imagekit" / "imagekit.key"
    assert (tmp_path / "cfg" / "imagekit" / "imagekit.pub").exists()
    again, created2 = load_signer(None)
    assert created2 is None and again.keyid == signer.keyid


def test_trust_file_entries(tmp_path: Path) -> None:
    keygen(tmp_path / "a")
    keygen(tmp_path / "b", "ed25519")
    (tmp_path / "cosign.pub").write_bytes((tmp_path / "b" / "imagekit.pub").read_bytes())
    a = trusted_from_pem(tmp_path / "a" / "imagekit.pub")
    (tmp_path / "t.yaml").write_text(
        f"keys:\n  - pem: a/imagekit.pub\n    keyid: {a.keyid}\n  - cosign: cosign.pub\n  - b/imagekit.pub\n"
    )
    trusted = load_trust(tmp_path / "t.yaml")
    assert [t.kind for t in trusted] == ["ecdsa-p256", "ed25519", "ed25519"]
    (tmp_path / "bad.yaml").write_text(f"keys:\n  - pem: a/imagekit.pub\n    keyid: {'0' * 64}\n")
    with pytest.raises(SignatureError, match="pins"):
        load_trust(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("keys: []\n")
    with pytest.raises(SignatureError, match="expected `keys:`"):
        load_trust(tmp_path / "empty.yaml")


@pytest.mark.aws
def test_kms_sign_and_verify_through_moto(moto_server: str, tmp_path: Path) -> None:
    import boto3

    kms = boto3.client("kms")
    key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/imagekit-test", TargetKeyId=key_id)
    signer, created = load_signer("awskms:alias/imagekit-test")
    assert created is None
    # RAW (<= 4096 bytes): moto hashes DIGEST inputs a second time, so tests stay on the RAW path
    env = sign_envelope(b'{"_type": "small"}', signer)
    trusted = [TrustedKey(signer.keyid, signer.public_key(), "awskms:alias/imagekit-test")]
    assert verify_envelope(env, trusted).payload == b'{"_type": "small"}'
    # the trust file can name the KMS key; its public key is fetched once
    (tmp_path / "t.yaml").write_text(f"keys:\n  - awskms: {key_id}\n")
    assert load_trust(tmp_path / "t.yaml")[0].keyid == signer.keyid
    rsa = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    with pytest.raises(SignatureError, match="ECC_NIST_P256"):
        load_signer(f"awskms:{rsa}")[0].public_key()


class _FakeKms:
    """Records how KMS was asked to sign; signs like real KMS does (DIGEST: the digest is not hashed again)."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self.key = ec.generate_private_key(ec.SECP256R1())
        self.calls: list[str] = []

    def get_public_key(self, KeyId: str) -> dict[str, object]:
        return {"KeySpec": "ECC_NIST_P256", "PublicKey": keys.spki_der(self.key.public_key())}

    def sign(self, KeyId: str, Message: bytes, MessageType: str, SigningAlgorithm: str) -> dict[str, object]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, utils

        self.calls.append(MessageType)
        assert SigningAlgorithm == "ECDSA_SHA_256"
        if MessageType == "DIGEST":
            assert len(Message) == 32
            return {"Signature": self.key.sign(Message, ec.ECDSA(utils.Prehashed(hashes.SHA256())))}
        assert len(Message) <= 4096
        return {"Signature": self.key.sign(Message, ec.ECDSA(hashes.SHA256()))}


def test_kms_uses_raw_up_to_4096_bytes_and_digest_beyond() -> None:
    fake = _FakeKms()
    signer, _ = load_signer("awskms:alias/x", kms_client=fake)
    trusted = [TrustedKey(signer.keyid, signer.public_key(), "kms")]
    small, big = b"x" * 100, b"y" * 10_000
    for payload in (small, big):
        assert verify_envelope(sign_envelope(payload, signer), trusted).payload == payload
    assert fake.calls == ["RAW", "DIGEST"]
