"""keygen."""

from __future__ import annotations

from pathlib import Path

import typer

from imagekit.cli import app, run
from imagekit.cli.console import err, escape


@app.command()
def keygen(
    key_type: str = typer.Option("ecdsa-p256", "--type", help="ecdsa-p256 (default, cosign-compatible) or ed25519."),
    out: Path | None = typer.Option(None, "--out", help="Folder for imagekit.key and imagekit.pub (default: config)."),
) -> None:
    """Create a signing key pair (imagekit.key 0600, imagekit.pub); never overwrites an existing key."""
    from imagekit.api.manifest import generate_key
    from imagekit.errors import UsageError
    from imagekit.manifest.keys import KEY_TYPES, PASSPHRASE_ENV

    def go() -> tuple[Path, Path]:
        if key_type not in KEY_TYPES:
            raise UsageError(f"--type must be one of {', '.join(KEY_TYPES)}, not {key_type!r}")
        return generate_key(out, key_type)

    private, public = run(go)
    import os

    enc = "encrypted with $" + PASSPHRASE_ENV if os.environ.get(PASSPHRASE_ENV) else "not encrypted"
    err.print(f"[green]ok[/] private key {escape(str(private))} (mode 0600, {enc})")
    err.print(f"   public key  {escape(str(public))} (list it in the trust file: keys: [{{pem: {public.name}}}])")


@app.command("sign-model")
def sign_model(
    path: Path = typer.Argument(..., help="The model weights file to sign."),
    key: Path = typer.Option(..., "--key", help="An ECDSA P-256 private key (PEM; imagekit keygen's default)."),
    out: Path | None = typer.Option(None, "--out", help="Where the signature goes (default: PATH.sig)."),
) -> None:
    """Sign model weights with OpenSSF model signing (offline, key-based); a spec names it as signature.bundle."""
    from imagekit.api.manifest import sign_model_file

    dest, signer = run(lambda: sign_model_file(path, key, out))
    err.print(f"[green]ok[/] {escape(str(dest))} (signer {escape(str(signer))})")
    err.print(f"   in imagekit.yaml: signature: {{bundle: {escape(dest.name)}, key: <the matching public key>}}")
