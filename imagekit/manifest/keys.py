"""Signing keys: local PEM files (ECDSA P-256, Ed25519), AWS KMS, and the trust file of accepted public keys."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from imagekit.errors import SignatureError, UsageError
from imagekit.fsutil import atomic_write
from imagekit.inputs import InputError, clip, read_regular, read_text
from imagekit.paths import config_dir
from imagekit.yamlsrc import YamlSyntaxError, load_located

KeyType = Literal["ecdsa-p256", "ed25519"]
KEY_TYPES: tuple[KeyType, ...] = ("ecdsa-p256", "ed25519")
PRIVATE_NAME = "imagekit.key"
PUBLIC_NAME = "imagekit.pub"
PASSPHRASE_ENV = "IMAGEKIT_KEY_PASSPHRASE"  # noqa: S105 - the variable name, not a secret
KMS_PREFIX = "awskms:"
# KMS signs a RAW message only up to this size; beyond it the caller must send the sha256 digest.
KMS_RAW_LIMIT = 4096
# the order of the P-256 group: an ECDSA signature (r, s) with s > n/2 has the equally valid twin (r, n - s)
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class Signer(Protocol):
    """Anything that signs DSSE PAE bytes: a local key or a KMS key."""

    @property
    def keyid(self) -> str:
        """sha256 (hex) of the DER SubjectPublicKeyInfo."""
        ...

    @property
    def ref(self) -> str:
        """Where the key lives, for messages (a path or awskms:...)."""
        ...

    def public_key(self) -> PublicKey:
        """The public half."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Signature over data (ECDSA: DER over sha256; Ed25519: pure)."""
        ...


def spki_der(key: PublicKey) -> bytes:
    """DER SubjectPublicKeyInfo of a public key."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def keyid_of(key: PublicKey) -> str:
    """The keyid imagekit writes into envelopes: sha256 hex of the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(spki_der(key)).hexdigest()


def public_pem(key: PublicKey) -> str:
    """PEM text of a public key."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def key_kind(key: PublicKey) -> KeyType:
    """ecdsa-p256 or ed25519; anything else is refused."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ecdsa-p256"
    raise SignatureError(f"unsupported key type {type(key).__name__}: use ECDSA P-256 or Ed25519")


def low_s(der: bytes) -> bytes:
    """The low-S form of a DER ECDSA P-256 signature (what Bitcoin, Go's and many strict verifiers expect)."""
    r, s = decode_dss_signature(der)
    if s > P256_ORDER // 2:
        s = P256_ORDER - s
    return encode_dss_signature(r, s)


def verify_signature(key: PublicKey, sig: bytes, data: bytes) -> bool:
    """True when sig is a valid signature over data by key."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, data)
        else:
            key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


# --- local keys --------------------------------------------------------------------------------------


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def keygen(out: Path, kind: KeyType = "ecdsa-p256") -> tuple[Path, Path]:
    """Write imagekit.key (0600, PKCS#8 PEM, encrypted when $IMAGEKIT_KEY_PASSPHRASE is set) and imagekit.pub."""
    if kind not in KEY_TYPES:
        raise UsageError(f"--type must be one of {', '.join(KEY_TYPES)}, not {kind!r}")
    try:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {clip(str(out))} is a file, not a folder: keygen writes {PRIVATE_NAME} and "
                             f"{PUBLIC_NAME} into a folder")  # fmt: skip
    except OSError as exc:
        raise UsageError(f"--out {clip(str(out))}: {exc.strerror or exc}") from None
    priv_path, pub_path = out / PRIVATE_NAME, out / PUBLIC_NAME
    for path in (priv_path, pub_path):
        if path.exists():
            raise UsageError(f"{path} already exists; refusing to overwrite a key (move it away or pick --out)")
    private: PrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if kind == "ecdsa-p256" else ed25519.Ed25519PrivateKey.generate()
    )
    passphrase = _passphrase()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the key folder {clip(str(out))}: {exc.strerror or exc}") from None
    # exclusive: a concurrent keygen into the same folder cannot silently replace a key someone already uses
    try:
        atomic_write(priv_path, pem, mode=0o600, exclusive=True)
        atomic_write(pub_path, public_pem(private.public_key()), mode=0o644, exclusive=True)
    except FileExistsError as exc:
        raise UsageError(f"{exc.filename or out} already exists; refusing to overwrite a key") from None
    return priv_path, pub_path


@dataclass(frozen=True)
class FileSigner:
    """A private key in a PEM file."""

    path: Path
    private: PrivateKey

    @property
    def keyid(self) -> str:
        return keyid_of(self.private.public_key())

    @property
    def ref(self) -> str:
        return str(self.path)

    def public_key(self) -> PublicKey:
        return self.private.public_key()

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(data)
        return low_s(self.private.sign(data, ec.ECDSA(hashes.SHA256())))


def load_file_signer(path: Path) -> FileSigner:
    """Load a private key file; refuse one that group or others can read, or of an unsupported type."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SignatureError(
            f"signing key {clip(str(path))} does not exist (create one with `imagekit keygen`)"
        ) from None
    except OSError as exc:
        raise InputError(f"signing key {clip(str(path))}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        hint = f" such as {path / PRIVATE_NAME}" if (path / PRIVATE_NAME).exists() else ""
        raise InputError(f"signing key {clip(str(path))} is a directory: give the private key file{hint}")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"signing key {clip(str(path))} is not a regular file: give the private key file")
    data = read_regular(path, what="signing key")
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise InputError(
            f"signing key {clip(str(path))} is a public key: --key takes the private key (imagekit.key); "
            "public keys go in the trust file"
        )
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SignatureError(
            f"signing key {path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        private = serialization.load_pem_private_key(data, password=_passphrase())
    except TypeError as exc:
        # cryptography raises TypeError for "encrypted but no password" and "password but not encrypted"
        raise SignatureError(f"signing key {path}: {exc} (set or unset ${PASSPHRASE_ENV})") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"signing key {path} could not be read: {exc} (wrong ${PASSPHRASE_ENV}?)") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise SignatureError(f"signing key {path} is a {type(private).__name__}: use ECDSA P-256 or Ed25519")
    key_kind(private.public_key())
    return FileSigner(path, private)


def default_key_path() -> Path:
    """The local default signing key: <config dir>/imagekit.key."""
    return config_dir() / PRIVATE_NAME


def ensure_default_key() -> tuple[Path, bool]:
    """The default key's path, creating a P-256 key there on first use; True when it was just created."""
    path = default_key_path()
    if path.exists():
        return path, False
    try:
        keygen(path.parent)
    except UsageError:
        # another process created it between the check and the write: use theirs
        if path.exists():
            return path, False
        raise
    return path, True


# --- AWS KMS -----------------------------------------------------------------------------------------


class KmsSigner:
    """An ECC_NIST_P256 key in AWS KMS, signing with ECDSA_SHA_256 (RAW up to 4096 bytes, else DIGEST)."""

    def __init__(self, key_id: str, client: Any = None) -> None:
        self.key_id = key_id
        self._client = client
        self._public: PublicKey | None = None

    @property
    def client(self) -> Any:
        """The boto3 KMS client (created on first use; honours AWS_ENDPOINT_URL)."""
        if self._client is None:
            self._client = _kms_client()
        return self._client

    @property
    def ref(self) -> str:
        return KMS_PREFIX + self.key_id

    def public_key(self) -> PublicKey:
        if self._public is None:
            self._public = kms_public_key(self.key_id, self.client)
        return self._public

    @property
    def keyid(self) -> str:
        return keyid_of(self.public_key())

    def sign(self, data: bytes) -> bytes:
        from imagekit.runners.aws import aws_errors

        if len(data) <= KMS_RAW_LIMIT:
            message, message_type = data, "RAW"
        else:
            message, message_type = hashlib.sha256(data).digest(), "DIGEST"
        try:
            resp = self.client.sign(
                KeyId=self.key_id, Message=message, MessageType=message_type, SigningAlgorithm="ECDSA_SHA_256"
            )
        except aws_errors() as exc:
            raise SignatureError(f"KMS sign with {self.key_id} failed: {exc}") from None
        return low_s(bytes(resp["Signature"]))


def _kms_client() -> Any:
    """The KMS client; SignatureError (not a crash) when boto3 has no region or credentials to make one."""
    from imagekit.runners.aws import aws_errors, kms_client

    try:
        return kms_client()
    except aws_errors() as exc:
        raise SignatureError(f"cannot use AWS KMS: {exc} (set AWS_REGION or AWS_DEFAULT_REGION)") from None


def kms_public_key(key_id: str, client: Any = None) -> PublicKey:
    """Fetch a KMS key's public half; refuse anything but ECC_NIST_P256 SIGN_VERIFY."""
    from imagekit.runners.aws import aws_errors

    if client is None:
        client = _kms_client()
    try:
        resp = client.get_public_key(KeyId=key_id)
    except aws_errors() as exc:
        raise SignatureError(f"KMS key {key_id}: {exc}") from None
    spec = resp.get("KeySpec") or resp.get("CustomerMasterKeySpec")
    if spec != "ECC_NIST_P256":
        raise SignatureError(f"KMS key {key_id} is {spec}; imagekit signs with ECC_NIST_P256 keys")
    key = serialization.load_der_public_key(bytes(resp["PublicKey"]))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError(f"KMS key {key_id} returned a {type(key).__name__}")
    return key


def load_signer(ref: str | None, *, base: Path | None = None, kms_client: Any = None) -> tuple[Signer, Path | None]:
    """A signer from a key reference (path or awskms:...), else the default key; returns (signer, created_path)."""
    if ref and ref.startswith(KMS_PREFIX):
        key_id = ref[len(KMS_PREFIX) :]
        if not key_id:
            raise UsageError("awskms: needs a key id, ARN or alias, e.g. awskms:alias/imagekit")
        return KmsSigner(key_id, kms_client), None
    if ref:
        path = Path(ref).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        return load_file_signer(path), None
    path, created = ensure_default_key()
    return load_file_signer(path), (path if created else None)


# --- trust -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    """A public key that verification accepts, and where it was listed."""

    keyid: str
    key: PublicKey
    source: str
    path: Path | None = None

    @property
    def kind(self) -> KeyType:
        """ecdsa-p256 or ed25519."""
        return key_kind(self.key)


def load_public_pem(path: Path) -> PublicKey:
    """A public key from a PEM file (imagekit.pub, cosign.pub)."""
    try:
        key = serialization.load_pem_public_key(read_regular(path, what="public key"))
    except FileNotFoundError:
        raise SignatureError(f"public key {clip(str(path))} does not exist") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"public key {path} could not be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise SignatureError(f"public key {path} is a {type(key).__name__}: use ECDSA P-256 or Ed25519")
    key_kind(key)
    return key


def trusted_from_pem(path: Path, source: str | None = None) -> TrustedKey:
    """A TrustedKey from a PEM file."""
    key = load_public_pem(path)
    return TrustedKey(keyid_of(key), key, source or str(path), path)


def load_trust(path: Path, *, kms_client: Any = None) -> list[TrustedKey]:
    """Read a trust file: `keys:` entries with one of `pem:`, `cosign:` (paths beside the file) or `awskms:`."""
    try:
        doc = load_located(read_text(path, what="trust file")).data
    except FileNotFoundError:
        raise SignatureError(f"trust file {clip(str(path))} does not exist") from None
    except YamlSyntaxError as exc:
        raise SignatureError(f"trust file {clip(str(path))}:{exc.line} is not valid YAML: {exc.message}") from None
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise SignatureError(f"trust file {path}: expected `keys:` with a list of pem:, cosign: or awskms: entries")
    out: list[TrustedKey] = []
    for i, raw in enumerate(entries):
        entry = raw
        if isinstance(raw, str):
            entry = {"awskms": raw[len(KMS_PREFIX) :]} if raw.startswith(KMS_PREFIX) else {"pem": raw}
        if not isinstance(entry, dict):
            raise SignatureError(f"trust file {path}: keys[{i}] must be a mapping such as {{pem: release.pub}}")
        kinds = [k for k in ("pem", "cosign", "awskms") if k in entry]
        if len(kinds) != 1:
            raise SignatureError(f"trust file {path}: keys[{i}] needs exactly one of pem, cosign, awskms")
        value = str(entry[kinds[0]])
        if kinds[0] == "awskms" and not value:
            raise SignatureError(f"trust file {path}: keys[{i}] awskms needs a key id, ARN or alias")
        if kinds[0] == "awskms":
            key = kms_public_key(value, kms_client)
            tk = TrustedKey(keyid_of(key), key, KMS_PREFIX + value)
        else:
            pem_path = Path(value).expanduser()
            if not pem_path.is_absolute():
                pem_path = path.parent / pem_path
            tk = trusted_from_pem(pem_path, f"{path.name}: {value}")
        pinned = entry.get("keyid")
        # str(): YAML reads an all-digit keyid as a number
        if pinned is not None and str(pinned) != tk.keyid:
            raise SignatureError(f"trust file {path}: keys[{i}] has keyid {tk.keyid}, the file pins {pinned}")
        out.append(tk)
    return out


def b64(data: bytes) -> str:
    """Standard base64 text (DSSE uses it for payload and sig)."""
    return base64.b64encode(data).decode("ascii")
