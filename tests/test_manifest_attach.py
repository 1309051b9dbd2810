"""Attestations at the registry, laid out as cosign does, against Debian's docker-registry (distribution 2.8).

The image here is a small OCI manifest pushed through the same registry client; test_manifest_e2e covers
`build --push` with a real image from the Docker Engine.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from manifest_helpers import make_spec
from typer.testing import CliRunner

from imagekit.cli import app
from imagekit.manifest.attach import DSSE_MEDIA_TYPE, att_tag, read_attestations
from imagekit.manifest.record import record_build
from imagekit.plan import plan_image
from imagekit.runners.registry import OCI_MANIFEST, Registry, split_reference

PROBE = json.loads((Path(__file__).parent / "fixtures" / "probe-cpu.json").read_text())


def cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def _http(url: str, method: str = "GET", accept: str = OCI_MANIFEST) -> tuple[dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept}, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(resp.headers), resp.read()


def push_image(host: str, repo: str, tag: str) -> str:
    """A tiny OCI image (config + one layer) under repo:tag; the Docker-Content-Digest the registry serves."""
    reg = Registry(host)
    layer = reg.push_blob(repo, b"not really a tarball\n", "application/vnd.oci.image.layer.v1.tar")
    config = reg.push_blob(repo, b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}',
                           "application/vnd.oci.image.config.v1+json")  # fmt: skip
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.to_json(), "layers": [layer.to_json()]}
    reg.put_manifest(repo, tag, manifest)
    digest = reg.manifest_digest(repo, tag)
    assert digest
    return digest


def _record(tmp_path: Path, ref: str, report: dict[str, Any]) -> str:
    loaded = make_spec(tmp_path)
    layers = plan_image(loaded, "app", "docker").layers
    rec = record_build(loaded, "app", "docker", layers, started="2026-11-21T01:00:00Z",
                       finished="2026-11-21T01:05:00Z", image_ref=ref, image_digest=ref.split("@")[1],
                       report=report)  # fmt: skip
    return rec.id


def test_attach_puts_the_envelopes_where_cosign_looks(tmp_path: Path, docker_registry: str) -> None:
    digest = push_image(docker_registry, "team/app", "v1")
    ref = f"{docker_registry}/team/app@{digest}"
    mid = _record(tmp_path, ref, {"passed": True, "failures": [], "probe": PROBE})
    spec = str(tmp_path / "imagekit.yaml")
    r = cli("manifest", "attach", mid, "-f", spec, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    tag = "sha256-" + digest.split(":")[1] + ".att"
    assert res["tag"] == tag == att_tag(digest) and res["attestations"] == 2 and res["added"] == 2

    # what any registry client sees: the tag listed, an OCI manifest whose layers are the DSSE envelopes
    _h, body = _http(f"http://{docker_registry}/v2/team/app/tags/list")
    assert sorted(json.loads(body)["tags"]) == sorted(["v1", tag])
    headers, body = _http(f"http://{docker_registry}/v2/team/app/manifests/{tag}")
    manifest = json.loads(body)
    assert manifest["mediaType"] == OCI_MANIFEST and headers["Docker-Content-Digest"] == res["manifest_digest"]
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert [ly["mediaType"] for ly in manifest["layers"]] == [DSSE_MEDIA_TYPE, DSSE_MEDIA_TYPE]
    types = [ly["annotations"]["predicateType"] for ly in manifest["layers"]]
    assert types == ["https://slsa.dev/provenance/v1", "https://cyclonedx.org/bom"]
    _h, config = _http(f"http://{docker_registry}/v2/team/app/blobs/{manifest['config']['digest']}")
    assert json.loads(config)["rootfs"]["diff_ids"] == [ly["digest"] for ly in manifest["layers"]]
    stored = tmp_path / "manifests" / "app"
    _h, first = _http(f"http://{docker_registry}/v2/team/app/blobs/{manifest['layers'][0]['digest']}")
    assert first == (stored / f"{mid}.intoto.json").read_bytes()  # the layer IS the stored envelope
    _h, second = _http(f"http://{docker_registry}/v2/team/app/blobs/{manifest['layers'][1]['digest']}")
    assert second == (stored / f"{mid}.sbom.dsse.json").read_bytes()

    # attaching again adds nothing; the image's own tag is untouched
    again = cli("manifest", "attach", mid, "-f", spec, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["added"] == 0
    assert Registry(docker_registry).manifest_digest("team/app", "v1") == digest
    host, repo, _ = split_reference(ref)
    assert [a["predicateType"] for a, _ in read_attestations(Registry(host), repo, digest)] == types

    # and `manifest verify --image` checks the registry serves the subject for the tag now
    ok = cli("manifest", "verify", mid, "-f", spec, "--image", f"{docker_registry}/team/app:v1")
    assert ok.exit_code == 0 and f"is {digest} at its registry" in ok.stderr, ok.output
    # v1 moved to another manifest (a real re-tag would look the same)
    Registry(docker_registry).put_manifest("team/app", "v1", {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": manifest["config"], "layers": manifest["layers"][:1]})  # fmt: skip
    moved = cli("manifest", "verify", mid, "-f", spec, "--image", f"{docker_registry}/team/app:v1")
    assert moved.exit_code == 1 and "(rule: subject is what the registry serves)" in moved.stderr, moved.output


def test_attach_refuses_what_the_registry_does_not_serve(tmp_path: Path, docker_registry: str) -> None:
    spec = str(tmp_path / "imagekit.yaml")
    ghost = f"{docker_registry}/team/ghost@sha256:" + "1" * 64
    mid = _record(tmp_path, ghost, {"passed": True, "failures": []})
    r = cli("manifest", "attach", mid, "-f", spec)
    assert r.exit_code == 1 and "does not serve team/ghost@sha256:111" in r.stderr and r.stderr.count("\n") == 1


def test_attach_refuses_a_local_build_and_an_unreachable_registry(tmp_path: Path) -> None:
    loaded = make_spec(tmp_path)
    layers = plan_image(loaded, "app", "docker").layers
    local = record_build(loaded, "app", "docker", layers, started="2026-11-21T01:00:00Z",
                         finished="2026-11-21T01:05:00Z", image_ref="imagekit/app:1", image_digest="sha256:" + "2" * 64,
                         report={"passed": True})  # fmt: skip
    spec = str(tmp_path / "imagekit.yaml")
    r = cli("manifest", "attach", local.id, "-f", spec)
    assert r.exit_code == 2 and "names no pushed image" in r.stderr and "--push" in r.stderr
    gone = _record(tmp_path / "b", "127.0.0.1:9/team/app@sha256:" + "3" * 64, {"passed": True})
    r = cli("manifest", "attach", gone, "-f", str(tmp_path / "b" / "imagekit.yaml"))
    assert r.exit_code == 1 and "registry 127.0.0.1:9" in r.stderr and "not reachable" in r.stderr


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        ("127.0.0.1:5000/team/app@sha256:ab", ("127.0.0.1:5000", "team/app", "sha256:ab")),
        ("localhost:5000/app:v1", ("localhost:5000", "app", "v1")),
        ("registry.example.com/a/b/c", ("registry.example.com", "a/b/c", "")),
    ],
)
def test_split_reference(ref: str, want: tuple[str, str, str]) -> None:
    assert split_reference(ref) == want
