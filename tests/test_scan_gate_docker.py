"""The scan gate on a real image: bookworm's `patch` 2.7.6-7, which bookworm-security has fixed, fails `build` at
the gate naming the package, the fixed version and the advisory (read from the mirror the build uses); the failed
build is recorded; allowed, it passes, and its signed vuln statement verifies and is attached on --push. The same
spec's `app` layer slips a Python package into the venv outside the lock: verify fails naming it and the layer;
its `weights` layer holds weights signed with OpenSSF model signing: the build checks the signature, and the
signer is in `manifest show`.

One small image on the bootstrapped bookworm base the suite already makes (an apt install of one 250 kB package
and six from the index): about a minute cold on a quiet machine.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import IN_CI, require_docker

from imagekit.manifest.keys import keygen, keyid_of, load_public_pem
from imagekit.manifest.ledger import open_ledger
from imagekit.manifest.vuln import read_vuln
from imagekit.modelsig import sign_model
from imagekit.names import base_tag
from imagekit.runners.docker import DockerEngine
from imagekit.spec import Bootstrap, load_spec

pytestmark = [pytest.mark.docker, pytest.mark.slow]

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# bookworm (12.x point releases) ships patch 2.7.6-7; bookworm-security has 2.7.6-7+deb12u1 (CVE-2026-115207),
# found by comparing the two Packages indexes on 2026-12-04
OLD_PATCH = "2.7.6-7"
MAIN_INDEX = "http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages.xz"
INJECT = (
    "d=/opt/venv/lib/python3.11/site-packages/evil_pkg-6.6.6.dist-info && mkdir -p $d && "
    'printf "Metadata-Version: 2.1\\nName: evil-pkg\\nVersion: 6.6.6\\n" > $d/METADATA'
)
SPEC = """\
version: 1
name: {name}
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
  runtime:
    parent: base
    apt: ["patch={old}"]
    pip: ["six==1.17.0"]
  app:
    parent: runtime
    run: ['{inject}']
  weights:
    parent: runtime
    models:
      - src: models/w.bin
        dest: /opt/models/w.bin
        sha256: "{sha}"
        signature: {{bundle: models/w.bin.sig, key: keys/trainer/imagekit.pub}}
images:
  gated:
    leaf: runtime
    repository: imagekit-test/{name}-gated
    verify: {{gpu: optional, scan: {{fail_on: high, scanners: [debian, trivy, grype]{allow}}}}}
  injected:
    leaf: app
    repository: imagekit-test/{name}-injected
    verify: {{gpu: optional}}
  signed:
    leaf: weights
    repository: imagekit-test/{name}-signed
    verify: {{gpu: optional}}
build:
  ca_bundle: ca.pem
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagekit", *args], check=False, capture_output=True, text=True, timeout=1500
    )


def pushed_digest(stderr: str, dest: str) -> str:
    """The digest a build pushed to dest, from its progress lines."""
    m = re.search("pushed " + re.escape(dest) + r"@(sha256:[0-9a-f]{64})", stderr)
    assert m, stderr[-3000:]
    return m.group(1)


def _write(folder: Path, name: str, allow: str = "") -> Path:
    (folder / "ca.pem").write_text(HOST_CA.read_text() if HOST_CA.is_file() else "")
    spec = folder / "imagekit.yaml"
    sha = hashlib.sha256((folder / "models" / "w.bin").read_bytes()).hexdigest()
    spec.write_text(SPEC.format(name=name, old=OLD_PATCH, inject=INJECT, allow=allow, sha=sha))
    return spec


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    require_docker()
    base = base_tag("base", Bootstrap(distro="debian", suite="bookworm"))
    if os.geteuid() != 0 and not DockerEngine().exists(base):
        (pytest.fail if IN_CI else pytest.skip)(f"{base} is missing and making it needs root once (debootstrap)")
    with urllib.request.urlopen(MAIN_INDEX, timeout=60) as resp:
        main = lzma.decompress(resp.read()).decode()
    # a point release that folds the fix into bookworm itself would leave nothing outdated: pick another package
    assert f"Package: patch\nVersion: {OLD_PATCH}\n" in main, "bookworm no longer ships patch 2.7.6-7"
    folder = tmp_path_factory.mktemp("scan")
    name = f"ik23-{uuid.uuid4().hex[:8]}"
    keygen(folder / "keys" / "trainer")
    (folder / "models").mkdir()
    (folder / "models" / "w.bin").write_bytes(os.urandom(64 * 1024))
    sign_model(folder / "models" / "w.bin", folder / "keys" / "trainer" / "imagekit.key")
    yield folder, name
    out = subprocess.run([require_docker(), "images", "--format", "{{.Repository}}:{{.Tag}}"],
                         capture_output=True, text=True, check=False).stdout.split()  # fmt: skip
    mine = [ref for ref in out if name in ref.rsplit(":", 1)[0]]
    if mine:
        subprocess.run([require_docker(), "rmi", *mine], capture_output=True, check=False)


def test_an_outdated_security_fixed_package_fails_the_gate_then_passes_allowed(
    spec_dir: tuple[Path, str], docker_registry: str
) -> None:
    folder, name = spec_dir
    spec = _write(folder, name)
    dest = f"{docker_registry}/ik23/{name}"
    # pushed (the push comes before verify), then stopped at the gate: recorded as failed, nothing attached
    failed = _cli("build", "-f", str(spec), "--target", "docker", "--image", "gated", "--push", dest)
    assert failed.returncode == 1, failed.stderr[-3000:]
    m = re.search(r"(CVE-\d{4}-\d+) \((\w+)\): patch 2\.7\.6-7, fixed in (2\.7\.6-7\+deb12u\d+) \[debian-archive\]",
                  failed.stderr)  # fmt: skip
    assert m, failed.stderr[-3000:]
    cve, severity, fixed = m.groups()
    assert severity in ("high", "critical")  # the fixed upload's changelog urgency (urgency=high)
    assert "recorded as failed" in failed.stderr
    assert "trivy: not installed; skipped" in failed.stderr and "grype: not installed; skipped" in failed.stderr

    loaded = load_spec(spec)
    ledger = open_ledger(loaded)
    (entry,) = [e for e in ledger.entries("gated", with_channels=False) if e.build is not None]
    assert entry.build is not None and entry.build.passed is False
    predicate = read_vuln(ledger, entry)
    assert predicate is not None
    result = predicate["scanner"]["result"]
    assert result["gate"] == {"fail_on": "high", "passed": False, "blocking": [cve], "errors": []}
    assert any(f["id"] == cve and f["fixed"] == fixed and f["package"] == "patch" for f in result["findings"])
    policy = folder / "policy.yaml"
    policy.write_text("verified: true\nscan: {fail_on: high}\nchannels: [stable]\n")
    pushed = f"{dest}@{pushed_digest(failed.stderr, dest)}"
    denied = _cli("manifest", "verify", "-f", str(spec), "--image", pushed, "--policy", str(policy))
    assert denied.returncode == 1, denied.stderr
    assert "policy clause 'scanned under the gate' failed" in denied.stderr, denied.stderr

    # allowed, with a reason: the build passes, is pushed, and the scan goes beside provenance and SBOM
    _write(folder, name, allow=f', allow: {{{cve}: "test: patch is never run on input"}}')
    ok = _cli("build", "-f", str(spec), "--target", "docker", "--image", "gated", "--push", dest, "--json")
    assert ok.returncode == 0, ok.stderr[-3000:]
    (img,) = json.loads(ok.stdout)["images"]
    ledger = open_ledger(load_spec(spec))
    good = ledger.build(img["manifest_id"], "gated")
    predicate = read_vuln(ledger, good)  # signed by the trusted key, over the record's subjects, bound by digest
    assert predicate is not None
    result = predicate["scanner"]["result"]
    assert result["gate"]["passed"] is True
    assert {"id": cve, "package": "patch", "reason": "test: patch is never run on input"} in result["allowed"]
    assert result["counts"][severity] >= 1
    digest = img["repo_digest"]
    att = f"http://{docker_registry}/v2/ik23/{name}/manifests/sha256-{digest.split(':', 1)[1]}.att"
    req = urllib.request.Request(att, headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        layers = json.loads(resp.read())["layers"]
    assert [ly["annotations"]["predicateType"] for ly in layers] == [
        "https://slsa.dev/provenance/v1",
        "https://cyclonedx.org/bom",
        "https://cosign.sigstore.dev/attestation/vuln/v1",
    ]

    # the admission question: not on the channel yet, then promoted, then asked with a key that did not sign
    pushed = f"{dest}@{digest}"
    waiting = _cli("manifest", "verify", "-f", str(spec), "--image", pushed, "--policy", str(policy))
    assert waiting.returncode == 1 and "policy clause 'on a channel' failed" in waiting.stderr, waiting.stderr
    assert _cli("promote", "gated", img["manifest_id"], "--channel", "stable", "-f", str(spec)).returncode == 0
    admitted = _cli("manifest", "verify", "-f", str(spec), "--image", pushed, "--policy", str(policy))
    assert admitted.returncode == 0, admitted.stdout + admitted.stderr
    assert "scanned under the gate" in admitted.stdout and "FAIL" not in admitted.stdout
    keygen(folder / "release")
    other = folder / "release-policy.yaml"
    other.write_text("scan: {fail_on: high}\nchannels: [stable]\ntrust: release/imagekit.pub\n")
    untrusted = _cli("manifest", "verify", "-f", str(spec), "--image", pushed, "--policy", str(other))
    assert untrusted.returncode == 1 and "policy clause 'signed by a trusted key' failed" in untrusted.stderr


def test_a_package_injected_outside_the_lock_fails_verify_naming_it_and_the_layer(
    spec_dir: tuple[Path, str],
) -> None:
    folder, name = spec_dir
    spec = _write(folder, name)
    failed = _cli("build", "-f", str(spec), "--target", "docker", "--image", "injected")
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "pip evil-pkg 6.6.6: installed in /opt/venv/lib/python3.11/site-packages but named by no lock" in (
        failed.stderr
    ), failed.stderr[-3000:]
    assert "it appeared in layer app" in failed.stderr


def test_signed_weights_build_and_their_signer_is_in_manifest_show(spec_dir: tuple[Path, str]) -> None:
    folder, name = spec_dir
    spec = _write(folder, name)
    built = _cli("build", "-f", str(spec), "--target", "docker", "--image", "signed", "--json")
    assert built.returncode == 0, built.stderr[-3000:]
    (img,) = json.loads(built.stdout)["images"]
    shown = _cli("manifest", "show", img["manifest_id"], "-f", str(spec), "--json")
    assert shown.returncode == 0, shown.stderr
    signer = keyid_of(load_public_pem(folder / "keys" / "trainer" / "imagekit.pub"))
    sig = hashlib.sha256((folder / "models" / "w.bin.sig").read_bytes()).hexdigest()
    assert json.loads(shown.stdout)["model_signers"] == {
        "/opt/models/w.bin": {"signer": signer, "signature_sha256": sig}
    }
    text = _cli("manifest", "show", img["manifest_id"], "-f", str(spec))
    assert f"signed by {signer}" in text.stdout
