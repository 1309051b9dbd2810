"""Packer templates: pure, deterministic, hcl2-parseable, `packer fmt` clean, and accepted by `packer validate`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import hcl2
import pytest
from conftest import require_packer

from imagekit.render.packer import RehearsalRender, fmt, render_packer, render_verify
from imagekit.spec import LoadedSpec, load_spec

SPEC = """\
version: 1
name: tts
layers:
  base:
    from:
      docker: nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
      ami: {name: "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*", owners: ["099720109477"]}
    cuda: "12.4"
    cudnn: "9"
    driver: "550"
    apt: [ffmpeg]
  runtime:
    parent: base
    python: "3.11"
    torch: "2.5.1"
    requirements: requirements.lock
  app:
    parent: runtime
    copy: [{src: app/, dest: /opt/app/app}]
    env: {GREETING: "${not-interpolated}"}
    user: app
    command: ["python", "-m", "app.server"]
    port: 7860
images:
  tts-inference: {leaf: app, targets: [docker, ami]}
aws:
  ami_regions: [eu-west-1]
  encrypted: true
  kms_key_id: alias/imagekit
  subnet_id: subnet-0abc
  security_group_id: sg-0abc
  ssh_interface: private_ip
  tags: {team: speech, "cost:center": "r&d ${x}"}
verify: {instance_type: g5.2xlarge}
"""


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedSpec:
    root = tmp_path_factory.mktemp("spec")
    (root / "imagekit.yaml").write_text(SPEC)
    (root / "requirements.lock").write_text("numpy==2.1.0\n")
    (root / "app").mkdir()
    (root / "app" / "server.py").write_text("print('hi')\n")
    return load_spec(root / "imagekit.yaml")


def _all(loaded: LoadedSpec) -> dict[str, str]:
    out: dict[str, str] = {}
    for prefix, reh in (("", None), ("rehearsal-", RehearsalRender())):
        for name, text in render_packer(loaded, "tts-inference", rehearsal=reh).items():
            out[prefix + name] = text
        out[prefix + "verify.pkr.hcl"] = render_verify(loaded, "tts-inference", rehearsal=reh)
    out["plugins-base.pkr.hcl"] = render_packer(loaded, "tts-inference", required_plugins=True)["base.pkr.hcl"]
    out["plugins-verify.pkr.hcl"] = render_verify(loaded, "tts-inference", required_plugins=True)
    return out


def _source(text: str) -> dict[str, object]:
    doc = hcl2.loads(text)
    (block,) = doc["source"]
    ((_, by_name),) = block.items()
    ((_, src),) = by_name.items()
    return dict(src)


def test_one_template_per_layer_root_first_and_deterministic(loaded: LoadedSpec) -> None:
    first = render_packer(loaded, "tts-inference")
    assert list(first) == ["base.pkr.hcl", "runtime.pkr.hcl", "app.pkr.hcl"]
    assert render_packer(loaded, "tts-inference") == first


def test_root_filters_children_take_parent_ami_and_tags_carry_hashes(loaded: LoadedSpec) -> None:
    out = render_packer(loaded, "tts-inference")
    base = _source(out["base.pkr.hcl"])
    assert "source_ami" not in base
    (flt,) = base["source_ami_filter"]  # type: ignore[misc]
    assert flt["owners"] == ['"099720109477"']
    assert flt["most_recent"] is True
    runtime = _source(out["runtime.pkr.hcl"])
    assert runtime["source_ami"] == "${var.parent_ami}"
    tags = runtime["tags"]
    assert isinstance(tags, dict)
    assert tags['"imagekit:layer"'] == '"runtime"'
    assert tags['"imagekit:pin:torch"'] == '"2.5.1"'
    assert tags['"imagekit:parent-ami"'] == '"${var.parent_ami}"'
    assert len(tags['"imagekit:layer-hash"'].strip('"')) == 64
    assert runtime["snapshot_tags"] == tags
    # a user's `${` is literal text, never a Packer interpolation
    assert tags['"cost:center"'] == '"r&d $${x}"'
    assert runtime["encrypt_boot"] is True
    assert runtime["kms_key_id"] == '"alias/imagekit"'
    assert runtime["ssh_interface"] == '"private_ip"'
    assert runtime["custom_endpoint_ec2"] == "${var.ec2_endpoint}"  # AWS_ENDPOINT_URL, else ""
    assert "skip_credential_validation" not in runtime
    assert "ssh_host" not in runtime


def test_app_change_changes_only_app_template(loaded: LoadedSpec, tmp_path: Path) -> None:
    before = render_packer(loaded, "tts-inference")
    for path in loaded.root.rglob("*"):
        if path.is_file():
            dest = tmp_path / path.relative_to(loaded.root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(path.read_bytes())
    (tmp_path / "app" / "server.py").write_text("print('changed')\n")
    after = render_packer(load_spec(tmp_path / "imagekit.yaml"), "tts-inference")
    assert after["base.pkr.hcl"] == before["base.pkr.hcl"]
    assert after["runtime.pkr.hcl"] == before["runtime.pkr.hcl"]
    assert after["app.pkr.hcl"] != before["app.pkr.hcl"]


def test_rehearsal_render_points_at_variables_only(loaded: LoadedSpec) -> None:
    out = render_packer(loaded, "tts-inference", rehearsal=RehearsalRender())
    base = _source(out["base.pkr.hcl"])
    assert base["custom_endpoint_ec2"] == "${var.ec2_endpoint}"
    assert base["source_ami"] == "${var.parent_ami}"
    assert base["ssh_username"] == '"root"'
    assert base["skip_credential_validation"] is True
    assert "127.0.0.1" not in "".join(out.values())


def test_fmt_aligns_runs_and_drops_blank_noise() -> None:
    text = 'a {\n\n  x = 1\n  long_name = "v"\n  list = [\n    1,\n  ]\n  \n  y = 2\n\n\n}\n'
    assert fmt(text) == 'a {\n  x         = 1\n  long_name = "v"\n  list = [\n    1,\n  ]\n\n  y = 2\n}\n'


def test_every_template_parses_with_hcl2(loaded: LoadedSpec) -> None:
    for name, text in _all(loaded).items():
        assert isinstance(hcl2.loads(text), dict), name


@pytest.mark.packer
def test_packer_fmt_clean_and_syntax_valid(loaded: LoadedSpec, tmp_path: Path) -> None:
    packer = require_packer()
    version = subprocess.run([packer, "version"], capture_output=True, text=True, check=True).stdout
    old = "v1.6." in version
    for name, text in _all(loaded).items():
        path = tmp_path / name
        path.write_text(text)
        fmt_check = subprocess.run(
            [packer, "fmt", "-check", "-diff", str(path)], check=False, capture_output=True, text=True
        )
        assert fmt_check.returncode == 0, f"{name}:\n{fmt_check.stdout}{fmt_check.stderr}"
        if old and name.startswith("plugins-"):
            continue  # Packer 1.6.6 has amazon built in and rejects required_plugins / skip_create_ami
        res = subprocess.run(
            [packer, "validate", "-syntax-only", str(path)], check=False, capture_output=True, text=True
        )
        assert res.returncode == 0, f"{name}:\n{res.stdout}{res.stderr}"


@pytest.mark.packer
def test_real_aws_templates_pass_full_validate(loaded: LoadedSpec, tmp_path: Path) -> None:
    packer = require_packer()
    scripts = tmp_path / "provision"
    scripts.mkdir()
    for layer in ("base", "runtime", "app"):
        (scripts / f"{layer}.sh").write_text("#!/bin/bash\nset -eu\n")
    common = ["-var", "build_id=0123", "-var", f"script_dir={scripts}", "-var", f"src_dir={loaded.root}"]
    common += ["-var", f"build_dir={scripts}", "-var", 'build_env=["PIP_FIND_LINKS=/tmp/imagekit/build/wheels"]']
    for name, text in render_packer(loaded, "tts-inference").items():
        for rehearsal_only in ("ssh_host", "ssh_port", "skip_credential_validation", "skip_metadata_api_check"):
            assert rehearsal_only not in text
        path = tmp_path / name
        path.write_text(text)
        argv = [packer, "validate", *common, "-var", "parent_ami=ami-0123456789abcdef0", str(path)]
        res = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=tmp_path)
        assert res.returncode == 0, f"{name}:\n{res.stdout}{res.stderr}"
    verify_dir = tmp_path / "verify"
    verify_dir.mkdir()
    (verify_dir / "probe.py").write_text("print('{}')\n")
    (verify_dir / "vmcheck.py").write_text("print('{}')\n")
    path = tmp_path / "verify.pkr.hcl"
    path.write_text(render_verify(loaded, "tts-inference"))
    argv = [
        packer,
        "validate",
        "-var",
        "ami_id=ami-0123456789abcdef0",
        "-var",
        "build_id=0123",
        "-var",
        f"verify_dir={verify_dir}",
        "-var",
        f"report_path={tmp_path / 'report.json'}",
        str(path),
    ]
    res = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, f"{res.stdout}{res.stderr}"


@pytest.mark.packer
def test_a_prewarm_app_template_is_syntax_valid(tmp_path: Path) -> None:
    """aws.prewarm writes its script through the app's inline provisioner: Packer must still parse it (a `"${` in
    the script once came out as `\\$${` and every prewarm AMI build failed at parse time)."""
    import shutil

    from imagekit.spec import load_spec

    packer = require_packer()
    root = tmp_path / "tts"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "tts", root)
    spec = root / "imagekit-cpu.yaml"
    text = spec.read_text().replace("targets: [docker]", "targets: [docker, ami]")
    spec.write_text(text + "aws: {prewarm: true}\n")
    loaded = load_spec(spec)
    for name, body in render_packer(loaded, "tts-cpu").items():
        path = tmp_path / name
        path.write_text(body)
        res = subprocess.run(
            [packer, "validate", "-syntax-only", str(path)], check=False, capture_output=True, text=True
        )
        assert res.returncode == 0, f"{name}:\n{res.stdout}{res.stderr}"
    assert "prewarm-tts-cpu.sh" in render_packer(loaded, "tts-cpu")["app.pkr.hcl"]
