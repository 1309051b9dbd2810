"""Signed model weights: OpenSSF model signing (PyPI `model-signing`), key-based and offline.

A spec's model may name `signature: {bundle, key}`: the Sigstore bundle `model_signing` wrote (a DSSE envelope
over the file's digest, with the signer's key hint and no transparency log) and the PEM public key of the team
that must have signed it. The build checks every such signature before any layer is built or anything copied;
what verified (the signer's key id, the bundle's sha256) goes into the provenance. `imagekit sign-model` writes
one with an ECDSA P-256 key (imagekit keygen's default; model-signing's elliptic-curve signer).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from imagekit.errors import BuildFailed, UsageError
from imagekit.events import Event, Reporter, silent
from imagekit.inputs import clip, is_file, read_regular
from imagekit.spec import LoadedSpec, ModelFile

MAX_BUNDLE_BYTES = 1024 * 1024
SIGNATURE_SUFFIX = ".sig"


@dataclass(frozen=True)
class ModelSignature:
    """A model signature that verified: who signed (the key's id) and which bundle said so."""

    dest: str
    signer: str  # imagekit's key id of the public key (sha256 of its DER SubjectPublicKeyInfo)
    key: str  # the public key's path as the spec names it
    bundle_sha256: str

    def as_dict(self) -> dict[str, str]:
        """For the build result and the record."""
        return {"signer": self.signer, "key": self.key, "signature_sha256": self.bundle_sha256}


def _keyid(pem: Path) -> str:
    from imagekit.manifest.keys import keyid_of, load_public_pem

    return keyid_of(load_public_pem(pem))


def verify_model(path: Path, bundle: Path, key: Path, *, dest: str, key_name: str) -> ModelSignature:
    """Check that `bundle` signs the bytes at `path` with `key`; BuildFailed naming what did not hold."""
    raw = read_regular(bundle, what="model signature", limit=MAX_BUNDLE_BYTES)  # the boundary: a bounded file
    try:
        doc = json.loads(raw)
    except ValueError:
        raise BuildFailed(f"model {dest}: the signature {bundle} is not a Sigstore bundle (JSON)") from None
    if not isinstance(doc, dict) or "dsseEnvelope" not in doc:
        raise BuildFailed(f"model {dest}: the signature {bundle} is not a model-signing bundle (no dsseEnvelope)")
    signer = _keyid(key)
    from model_signing import verifying

    try:
        verifying.Config().use_elliptic_key_verifier(public_key=key).verify(path, bundle)  # type: ignore[no-untyped-call]
    except Exception as exc:
        why = clip(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 300)
        raise BuildFailed(
            f"model {dest}: the signature {bundle.name} does not verify with {key_name} (signer {signer[:16]}): "
            f"{why}. Nothing was built; get weights and signature from the team that trained the model"
        ) from None
    return ModelSignature(dest, signer, key_name, hashlib.sha256(raw).hexdigest())


def signed_models(loaded: LoadedSpec, images: Iterable[str]) -> list[tuple[str, str, ModelFile]]:
    """(image, layer, model) of every model of the images' chains that names a signature."""
    out = []
    for image in images:
        for layer, spec in loaded.chain(image):
            out += [(image, layer, m) for m in spec.models if m.signature is not None]
    return out


def check_signatures(
    loaded: LoadedSpec, images: Iterable[str], reporter: Reporter = silent, *, ca_bundle: Path | None = None
) -> dict[str, dict[str, str]]:
    """Verify every signed model of the images before anything is built: dest -> signer, key, signature digest."""
    from imagekit.fetch import fetch_model

    done: dict[str, dict[str, str]] = {}
    for image, layer, model in signed_models(loaded, images):
        sig = model.signature
        assert sig is not None
        bundle, key = loaded.local(sig.bundle), loaded.local(sig.key)
        for what, path in (("signature bundle", bundle), ("public key", key)):
            if not is_file(path):
                raise UsageError(f"layers.{layer}.models[{model.dest}].signature: the {what} {path} is not a file")
        if model.is_remote:
            path = fetch_model(model, ca_bundle=ca_bundle, reporter=reporter, image=image, layer=layer)
        else:
            path = loaded.local(model.src)
        reporter(Event("step", f"model signature: {model.dest} with {sig.key}", image, layer))
        done[model.dest] = verify_model(path, bundle, key, dest=model.dest, key_name=sig.key).as_dict()
    return done


def sign_model(path: Path, key: Path, out: Path | None = None) -> tuple[Path, str]:
    """`imagekit sign-model PATH --key K`: write PATH.sig (a model-signing bundle); returns it and the signer id."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from imagekit.manifest.keys import PASSPHRASE_ENV, keyid_of, load_file_signer

    if not is_file(path):
        raise UsageError(f"sign-model: {path} is not a file")
    signer = load_file_signer(key)  # the same key files imagekit signs records with (PEM, $IMAGEKIT_KEY_PASSPHRASE)
    public = signer.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise UsageError(f"sign-model: {key} is not an ECDSA key (model-signing signs with elliptic-curve keys)")
    dest = out or path.with_name(path.name + SIGNATURE_SUFFIX)
    if dest.exists():
        raise UsageError(f"sign-model: {dest} exists; remove it first (a signature is never overwritten)")
    from model_signing import signing

    password = os.environ.get(PASSPHRASE_ENV) or None
    signing.Config().use_elliptic_key_signer(private_key=key, password=password).sign(path, dest)  # type: ignore[no-untyped-call]
    return dest, keyid_of(public)
