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
