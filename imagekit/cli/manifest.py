"""manifest list/show/verify/diff; promote, rollback, revoke, resolve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from imagekit.cli import app, run
from imagekit.cli.console import cell, err, escape, out, print_json

manifest_app = typer.Typer(help="Signed build manifests: list, show, verify, sbom, attach, diff.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")

SpecOpt = typer.Option(None, "-f", "--file", help="The spec file (locates the store and trust file).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
TrustOpt = typer.Option(None, "--trust", help="A trust file or a public key PEM (default: the spec's trust file).")
KeyOpt = typer.Option(None, "--key", help="Signing key: a file path or awskms:<id|arn|alias> (default: the spec's).")
WhoOpt = typer.Option(None, "--who", help="Who to record (default: $USER@hostname).")


@manifest_app.command("list")
def list_cmd(
    image: str | None = typer.Argument(None, help="Only builds of this image."),
    file: Path | None = SpecOpt,
    trust: Path | None = TrustOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Every recorded build: id, image, target, created, subjects, verified, channels."""
    from imagekit.api.manifest import list_manifests

    rows = run(lambda: list_manifests(file, image, trust))
    if json_out:
        print_json(rows)
        return
    from rich.table import Table

    from imagekit.manifest.statement import LOCAL_IMAGE_PREFIX

    table = Table()
    for name in ("id", "image", "target", "created", "verified", "channels"):
        table.add_column(name, no_wrap=True)
    table.add_column("artifact", overflow="fold", min_width=19)
    for r in rows:
        if r["signature"] != "ok":
            state = "[red]bad signature[/]"
        elif r["revoked"]:
            state = "[red]revoked[/]"
        else:
            state = "[green]yes[/]" if r["verified"] else "[red]failed[/]"
        if r["rehearsal"]:
            state += " (rehearsal)"
        # the digest (or AMI ids) is what tells builds apart; the full subjects are in --json and `show`
        artifact = ", ".join(
            s.split("@", 1)[1][:19] if s.startswith("oci:") else "local " + s.split(":", 1)[1] if s.startswith(
                LOCAL_IMAGE_PREFIX) else s[4:]
            for s in r["subjects"]
            if s.startswith(("oci:", "aws:", LOCAL_IMAGE_PREFIX))
        )  # fmt: skip
        created = (r["created"] or "?").replace("T", " ")[:16]
        table.add_row(cell(r["id"]), cell(r["image"]), cell(r["target"] or "?"), cell(created), state,
                      cell(", ".join(r["channels"])), cell(artifact))  # fmt: skip
    out.print(table)
    if not rows:
        err.print("no manifests recorded yet")


def _figures(report: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key in sorted(report):
        value = report[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict) and len(value) <= 12:
            rows += _figures(value, name + ".")
        elif isinstance(value, dict):
            rows.append((name, f"{len(value)} entries"))
        elif isinstance(value, list):
            rows.append((name, ", ".join(map(str, value[:6])) + (" …" if len(value) > 6 else "") if value else "—"))
        else:
            rows.append((name, str(value)))
    return rows


@manifest_app.command("seal-heads")
def seal_heads_cmd(
    file: Path | None = SpecOpt,
    trust: Path | None = TrustOpt,
    key: str | None = KeyOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Once, for a store written before signed log heads: verify each channel/revocation log, sign its head."""
    from imagekit.api.manifest import seal_log_heads

    res = run(lambda: seal_log_heads(file, trust, key))
    if json_out:
        print_json(res)
        return
    for where in res["sealed"]:
        err.print(f"[green]ok[/] sealed {escape(str(where))}")
    if not res["sealed"]:
        err.print(f"every log of {escape(str(res['store']))} has a signed head already")


@manifest_app.command("show")
def show(
    ref: str = typer.Argument(..., help="Manifest id (or a unique prefix)."),
    file: Path | None = SpecOpt,
    trust: Path | None = TrustOpt,
    json_out: bool = JsonOpt,
) -> None:
    """One build: subjects, layers, dependencies, builder and the verification figures."""
    from imagekit.api.manifest import show_manifest

    doc = run(lambda: show_manifest(file, ref, trust))
    if json_out:
        print_json(doc)
        return
    sig = "[green]ok[/]" if doc["signature"] == "ok" else f"[red]{escape(str(doc['signature']))}[/]"
    out.print(f"[bold]manifest {escape(doc['id'])}[/]  {escape(doc['image'])} ({escape(str(doc['target']))})  "
              f"{escape(str(doc['location']))}")  # fmt: skip
    out.print(f"  signature     {sig}" + (f" (key {escape(doc['key'])})" if doc.get("key") else ""))
    verdict = "[green]passed[/]" if doc["verified"] else "[red]FAILED[/] " + escape("; ".join(doc["failures"]))
    out.print(f"  verification  {verdict}" + ("  [yellow]rehearsal[/]" if doc["rehearsal"] else ""))
    if doc["revoked"]:
        out.print(f"  [red]revoked[/]       {escape(doc['revoked'])}")
    out.print(f"  built         {escape(str(doc['started']))} → {escape(str(doc['created']))}")
    out.print(f"  channels      {escape(', '.join(doc['channels'])) or '—'}")
    for k, v in sorted(doc["artifact"].items()):
        out.print(f"  {k:<13} {escape(str(v))}")
    if doc["size_bytes"]:
        out.print(f"  size          {doc['size_bytes']:,} bytes")
    out.print("  layers")
    for layer in doc["layers"]:
        out.print(f"    {escape(str(layer['name'])):<12} {escape(str(layer['hash']))}")
    if doc["models"]:
        out.print("  weights")
        signers = doc.get("model_signers") or {}
        for name, digest in sorted(doc["models"].items()):
            out.print(f"    {escape(name)}  sha256:{digest}")
            if name in signers:
                s = signers[name]
                out.print(f"      signed by {escape(s['signer'])} (signature sha256:{escape(s['signature_sha256'])})")
    if doc.get("source"):
        out.print(f"  git commit    {escape(str(doc['source']))}")
    out.print("  builder       " + escape(", ".join(f"{k} {v}" for k, v in sorted(doc["builder"].items()))))
    report = doc.get("report")
    if report:
        out.print("  verification figures")
        for key, value in _figures(report):
            out.print(f"    {escape(key):<32} {escape(value)}")


@manifest_app.command("verify")
def verify(  # noqa: PLR0917 (typer options)
    ref: str | None = typer.Argument(None, help="Manifest id, or an envelope file (.intoto.json)."),
    file: Path | None = SpecOpt,
    trust: Path | None = TrustOpt,
    image: str | None = typer.Option(
        None, "--image", help="Also check that the registry serves this subject for REGISTRY/REPO:TAG now (online)."
    ),
    policy: Path | None = typer.Option(
        None, "--policy", help="With --image: an admission policy (verified, scanned, trusted key, channel)."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Offline: exit 0 only if a trusted key signed it, every strict rule holds and the build is not revoked."""
    from dataclasses import asdict

    from imagekit.api.attest import verify_manifest
    from imagekit.errors import UsageError

    if policy is not None:
        _verify_policy(file, image, policy, trust, json_out)
        return
    if ref is None:
        run(lambda: (_ for _ in ()).throw(UsageError("name a manifest id (or use --image REF --policy FILE)")))
        return
    manifest_ref = ref
    res = run(lambda: verify_manifest(file, manifest_ref, trust, image))
    if json_out:
        print_json({"ok": True, **asdict(res)})
        return
    err.print(f"[green]ok[/] manifest {escape(res.id)} ({escape(res.image)}) signed by {escape(res.key_source)} "
              f"(keyid {res.keyid[:16]}…)" + ("; not revoked" if res.revocation_checked else ""))  # fmt: skip
    for note in res.notes:
        label = "" if note.startswith("warning:") else "note: "
        err.print(f"[yellow]{label}[/]{escape(note)}")
    if res.cosign:
        err.print("the same check with cosign:")
        out.print(res.cosign, markup=False)


def _verify_policy(file: Path | None, image: str | None, policy: Path, trust: Path | None, json_out: bool) -> None:
    from dataclasses import asdict

    from imagekit.api.policy import verify_policy
    from imagekit.errors import UsageError

    if image is None or not image.strip():
        run(lambda: (_ for _ in ()).throw(UsageError("--policy needs --image REGISTRY/REPO:TAG (or @sha256:...)")))
        return
    res = run(lambda: verify_policy(file, image, policy, trust))
    if json_out:
        print_json({"ok": res.ok, "image": res.image, "digest": res.digest, "manifest": res.manifest,
                    "clauses": [asdict(c) for c in res.clauses]})  # fmt: skip
    else:
        for c in res.clauses:
            mark = "[green]  ok[/]" if c.ok else "[bold red]FAIL[/]"
            out.print(f"{mark} {escape(c.name):<24} {escape(c.detail)}")
    run(res.require)


@manifest_app.command("sbom")
def sbom(
    ref: str = typer.Argument(..., help="Manifest id (or a unique prefix)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the CycloneDX JSON here (default: stdout)."),
    file: Path | None = SpecOpt,
    trust: Path | None = TrustOpt,
) -> None:
    """The build's SBOM (CycloneDX 1.6 JSON of the verified image's pip and dpkg packages), after checking it."""
    from imagekit.api.attest import manifest_sbom
    from imagekit.api.manifest import write_json

    bom = run(lambda: manifest_sbom(file, ref, trust))
    if output is None:
        print_json(bom)
        return
    run(lambda: write_json(output, bom))
    err.print(f"[green]ok[/] {len(bom.get('components', []))} components -> {escape(str(output))}")


@manifest_app.command("attach")
def attach(
    ref: str = typer.Argument(..., help="Manifest id (or a unique prefix) of a pushed build."),
    registry: str | None = typer.Option(
        None, "--registry", help="REGISTRY/REPO to attach at (default: where the build pushed its image)."
    ),
    file: Path | None = SpecOpt,
    trust: Path | None = TrustOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Push the signed provenance (and SBOM) beside the image, as cosign does: the sha256-<digest>.att tag."""
    from imagekit.api.attest import attach_manifest

    res = run(lambda: attach_manifest(file, ref, registry, trust))
    if json_out:
        print_json(res)
        return
    err.print(f"[green]ok[/] {res['attestations']} attestation(s) at {escape(res['reference'])} "
              f"({res['added']} new) for {escape(res['image'])}")  # fmt: skip


@manifest_app.command("diff")
def diff(
    old: str = typer.Argument(..., help="The older manifest id."),
    new: str = typer.Argument(..., help="The newer manifest id."),
    file: Path | None = SpecOpt,
    trust: Path | None = TrustOpt,
    json_out: bool = JsonOpt,
) -> None:
    """What changed between two builds: layers, versions, packages, weights, verification figures, size."""
    from imagekit.api.manifest import diff_manifests

    doc = run(lambda: diff_manifests(file, old, new, trust))
    if json_out:
        print_json(doc)
        return
    out.print(f"[bold]{escape(str(doc['old']))} → {escape(str(doc['new']))}[/]")
    any_change = False
    for section in ("layers", "versions", "packages", "weights", "verification", "artifact", "builder"):
        changes = doc[section]
        if not changes:
            continue
        any_change = True
        out.print(f"[bold]{section}[/]")
        for c in changes:
            out.print(f"  {escape(c['key'])}: {escape(str(c['old']))} → {escape(str(c['new']))}")
    if doc["size"]:
        any_change = True
        o, n = doc["size"]["old"], doc["size"]["new"]
        pct = f" ({(n - o) / o * 100:+.1f}%)" if o and n else ""
        out.print(f"[bold]size[/]\n  {o} → {n} bytes{pct}")
    if not any_change:
        out.print("no differences")


@app.command()
def promote(  # noqa: PLR0917 - typer maps each parameter to an option
    image: str = typer.Argument(..., help="The image name in the spec."),
    ref: str = typer.Argument(..., help="Manifest id to promote, or a release tag (build --tag)."),
    channel: str = typer.Option(..., "--channel", help="Channel name, e.g. stable."),
    why: str = typer.Option("", "--why", help="Why (goes into the signed record)."),
    allow_rehearsal: bool = typer.Option(False, "--allow-rehearsal", help="Allow a rehearsal build."),
    who: str | None = WhoOpt,
    file: Path | None = SpecOpt,
    trust: Path | None = TrustOpt,
    key: str | None = KeyOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Point a channel at a verified build (refuses unverified, failed, unsigned or revoked builds)."""
    from imagekit.api.manifest import promote as api_promote

    res = run(lambda: api_promote(file, image, ref, channel, why=why, who=who, allow_rehearsal=allow_rehearsal,
                                  trust=trust, key=key))  # fmt: skip
    if json_out:
        print_json(res)
    else:
        err.print("[green]ok[/] " + escape(f"{image} {channel} → {res['manifest']} (record #{res['seq']})"))


@app.command()
def rollback(  # noqa: PLR0917 - typer maps each parameter to an option
    image: str = typer.Argument(..., help="The image name in the spec."),
    channel: str = typer.Option(..., "--channel", help="Channel name."),
    why: str = typer.Option("", "--why", help="Why (goes into the signed record)."),
    who: str | None = WhoOpt,
    file: Path | None = SpecOpt,
    trust: Path | None = TrustOpt,
    key: str | None = KeyOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Point a channel back at its previous assignment."""
    from imagekit.api.manifest import rollback as api_rollback

    res = run(lambda: api_rollback(file, image, channel, why=why, who=who, trust=trust, key=key))
    if json_out:
        print_json(res)
    else:
        moved = f"{image} {channel}: {res['from']} → {res['manifest']} (record #{res['seq']})"
        err.print("[green]ok[/] " + escape(moved))


@app.command()
def revoke(  # noqa: PLR0917 - typer maps each parameter to an option
    ref: str = typer.Argument(..., help="Manifest id to revoke."),
    reason: str = typer.Option(..., "--reason", help="Why (goes into the signed record)."),
    layer: str | None = typer.Option(None, "--layer", help="Revoke this layer of the build's chain (default: leaf)."),
    who: str | None = WhoOpt,
    file: Path | None = SpecOpt,
    trust: Path | None = TrustOpt,
    key: str | None = KeyOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Revoke a build; every build whose chain contains the revoked layer is revoked with it."""
    from imagekit.api.manifest import revoke as api_revoke

    res = run(lambda: api_revoke(file, ref, reason=reason, layer=layer, who=who, trust=trust, key=key))
    if json_out:
        print_json(res)
        return
    err.print("[green]ok[/] " + escape(f"revoked layer {res['layer']} ({res['hash'][:12]}) of {res['manifest']}"))
    err.print(f"   builds revoked now: {', '.join(res['revoked'])}", markup=False)


@app.command()
def resolve(  # noqa: PLR0917 - typer maps each parameter to an option
    image: str = typer.Argument(..., help="The image name in the spec."),
    channel: str | None = typer.Option(None, "--channel", help="Channel name."),
    tag: str | None = typer.Option(None, "--tag", help="A release tag given to `build --tag` instead."),
    file: Path | None = SpecOpt,
    trust: Path | None = TrustOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Print what a channel or release tag points at: REGISTRY/REPO@sha256:… (pushed), a local image ID, or AMIs."""
    from imagekit.api.manifest import resolve as api_resolve

    res = run(lambda: api_resolve(file, image, channel, trust, tag=tag))
    if json_out:
        print_json(res)
        return
    if "image" in res:
        out.print(res["image"], markup=False)
    elif "image_id" in res:
        # not pushed: only the engine that built it can run this ID; say so on stderr, keep stdout the value
        err.print(f"[yellow]note:[/] {escape(res['local_ref'])} was not pushed; this image ID is local to its engine")
        out.print(res["image_id"], markup=False)
    for region, ami in sorted(res.get("amis", {}).items()):
        out.print(f"{region} {ami}", markup=False)


@app.command()
def history(
    image: str = typer.Argument(..., help="The image name in the spec."),
    channel: str = typer.Option(..., "--channel", help="Channel name."),
    file: Path | None = SpecOpt,
    trust: Path | None = TrustOpt,
    json_out: bool = JsonOpt,
) -> None:
    """A channel's signed log: every promotion and rollback, with who, when and why."""
    from imagekit.api.manifest import channel_history

    rows = run(lambda: channel_history(file, image, channel, trust))
    if json_out:
        print_json(rows)
        return
    for r in rows:
        what = f"{r['from']} → {r['manifest']}" if r["action"] == "rollback" else str(r["manifest"])
        why = f"  {r['why']}" if r.get("why") else ""
        line = f"#{r['seq']:<4} {r['when']}  {r['action']:<8} {what}  by {r['who']}{why}"
        out.print(line, markup=False)  # every part of it comes from the log
    if not rows:
        err.print(f"channel {channel} of {image} has no records yet", markup=False)
