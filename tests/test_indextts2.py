"""The IndexTTS2 seed shape (examples/indextts2): torch 1.13.1+cu117 on Python 3.9 from a bullseye debootstrap base,
weights 0600 owned by the service user, a /ready that waits out a slow load, AMIs in aws-cn (cn-north-1)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, copy_example, require_docker, require_packer

from imagekit.errors import SpecError
from imagekit.render.dockerfile import render_dockerfile
from imagekit.render.packer import render_packer
from imagekit.render.scripts import render_scripts
from imagekit.spec import load_spec, parse_spec

SPEC = EXAMPLES / "indextts2" / "imagekit.yaml"
WEIGHTS = "/opt/indextts2/checkpoints/gpt.pth"


def test_the_example_validates_and_renders_its_shape() -> None:
    loaded = load_spec(SPEC)
    res = loaded.resolved("indextts2")
    assert (res.torch, res.cuda, res.cudnn, res.python, res.user) == ("1.13.1", "11.7", "8", "3.9", "indextts")
    dockerfile = render_dockerfile(loaded, "indextts2")
    assert re.search(r"^ARG BASE_IMAGE=imagekit-base-base:[0-9a-f]{16}$", dockerfile, re.M)
    assert "COPY --chown=indextts:indextts --chmod=0600 models/gpt.pth /opt/indextts2/checkpoints/gpt.pth" in dockerfile
    assert "--start-period=900s" in dockerfile  # the long health timeout
    scripts = render_scripts(loaded, "indextts2", "ami")
    assert "python3.9 python3.9-venv" in scripts["runtime"]
    assert 'default_index=""' in scripts["runtime"]  # PyPI's 1.13.1 is the cu117 build: no second index
    assert "cuda-drivers-515" in scripts["base"] and "libcudnn8" in scripts["base"]
    assert "chmod 0600 /opt/indextts2/checkpoints/gpt.pth" in scripts["app"]


def test_the_ami_settings_are_aws_cn() -> None:
    loaded = load_spec(SPEC)
    base = render_packer(loaded, "indextts2")["base.pkr.hcl"]
    assert 'region        = "cn-north-1"' in base and 'instance_type = "g4dn.xlarge"' in base
    assert '"837727238323"' in base and '"cn-northwest-1"' in base
    assert "099720109477" not in base


@pytest.mark.packer
def test_the_aws_cn_templates_pass_packer_validate(tmp_path: Path) -> None:
    packer = require_packer()
    loaded = load_spec(SPEC)
    scripts = tmp_path / "provision"
    scripts.mkdir()
    for layer in ("base", "runtime", "app"):
        (scripts / f"{layer}.sh").write_text("#!/bin/bash\nset -eu\n")
    common = ["-var", "build_id=0123", "-var", f"script_dir={scripts}", "-var", f"src_dir={loaded.root}"]
    common += ["-var", f"build_dir={scripts}", "-var", 'build_env=["PIP_FIND_LINKS=/tmp/imagekit/build/wheels"]']
    for name, text in render_packer(loaded, "indextts2").items():
        path = tmp_path / name
        path.write_text(text)
        argv = [packer, "validate", *common, "-var", "parent_ami=ami-0123456789abcdef0", str(path)]
        res = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=tmp_path)
        assert res.returncode == 0, f"{name}:\n{res.stdout}{res.stderr}"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            '"837727238323"',
            '"099720109477"',
            "layers.base.from.ami.owners[0]: 099720109477 is Canonical (Ubuntu)'s owner id in the aws partition, "
            "not aws-cn (cn-north-1): use 837727238323",
        ),
        (
            "ami_regions: [cn-northwest-1]",
            "ami_regions: [us-west-2]",
            "aws.ami_regions[0]: us-west-2 is in the aws partition; AMIs copy only within aws-cn (cn-north-1)",
        ),
        (
            "encrypted: true",
            'kms_key_id: "arn:aws:kms:cn-north-1:111122223333:key/1234abcd"',
            "aws.kms_key_id: the ARN names partition aws, but cn-north-1 is in aws-cn",
        ),
        ("region: cn-north-1", "region: china-1", "aws.region: 'china-1' is not an AWS region name"),
    ],
    ids=["owner", "copy-region", "kms-arn", "region"],
)
def test_partition_mistakes_are_spec_errors_at_their_line(old: str, new: str, message: str, tmp_path: Path) -> None:
    text = SPEC.read_text(encoding="utf-8")
    assert old in text
    bad = text.replace(old, new)
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(bad, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        parse_spec(bad, spec)
    lines = [str(p) for p in info.value.problems]
    assert any(message in line for line in lines), lines
    line_no = next(i for i, t in enumerate(bad.splitlines(), 1) if new.split(":")[0] in t and new.split()[-1] in t)
    assert any(f"imagekit.yaml:{line_no}:" in line for line in lines), (line_no, lines)


def test_a_cn_kms_arn_and_alias_pass(tmp_path: Path) -> None:
    text = SPEC.read_text(encoding="utf-8")
    for kms in ('"arn:aws-cn:kms:cn-north-1:111122223333:key/1234abcd"', "alias/imagekit"):
        spec = tmp_path / "imagekit.yaml"
        spec.write_text(text.replace("encrypted: true", f"kms_key_id: {kms}"), encoding="utf-8")
        parse_spec(spec.read_text(encoding="utf-8"), spec)


# --- built and verified on the engine ----------------------------------------------------------------------------


def _imagekit(*args: str, timeout: float = 3000) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagekit", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_docker()
    copy = copy_example(tmp_path_factory.mktemp("indextts2") / "indextts2", "indextts2")
    spec = copy / "imagekit.yaml"
    text = spec.read_text(encoding="utf-8")
    # the example waits 75 s like the real checkpoints; the test keeps the shape with a short load
    spec.write_text(text.replace('MODEL_LOAD_SECONDS: "75"', 'MODEL_LOAD_SECONDS: "6"'), encoding="utf-8")
    out = _imagekit("build", "-f", str(spec), "--target", "docker", "--gpu", "optional", "--json")
    assert out.returncode == 0, out.stderr[-4000:]
    image = json.loads(out.stdout)["images"][0]
    report: dict[str, Any] = json.loads(Path(image["verify_report"]).read_text(encoding="utf-8"))
    return {"spec": spec, "image": image, "report": report}


@pytest.mark.docker
@pytest.mark.slow
def test_indextts2_builds_and_verifies_torch_1_13_1_cu117_on_python_3_9(built: dict[str, Any]) -> None:
    report = built["report"]
    assert report["ok"] is True, report["failures"]
    probe = report["probe"]
    assert probe["python"]["version"].startswith("3.9.")
    assert probe["os"]["version_codename"] == "bullseye"
    assert probe["torch"]["version"] == "1.13.1+cu117" and probe["torch"]["cuda"] == "11.7"
    libs = probe["cuda_libs"]
    assert libs["cudnn"]["version"] // 1000 == 8 and libs["cudnn"]["from_wheel"], libs["cudnn"]
    # CUDA 11's runtime answers cudaRuntimeGetVersion with 35 (no driver) on a CPU host; its wheel says 11.7
    cudart = libs["cudart"]
    assert cudart["from_wheel"] and cudart["wheel"] == {"name": "nvidia-cuda-runtime-cu11", "version": "11.7.99"}
    assert "version" in cudart or "status 35" in cudart["error"], cudart


@pytest.mark.docker
@pytest.mark.slow
def test_weights_are_0600_owned_by_the_service_user(built: dict[str, Any]) -> None:
    probe = built["report"]["probe"]
    entry = probe["models"][WEIGHTS]
    assert probe["user"]["name"] == "indextts"
    assert entry["mode"] == "0600" and entry["uid"] == probe["user"]["uid"] and entry["readable"] is True


@pytest.mark.docker
@pytest.mark.slow
def test_health_waits_out_the_slow_load(built: dict[str, Any]) -> None:
    health = built["report"]["health"]
    assert health["ready"] is True and health["timeout"] == 900
    assert health["seconds_to_ready"] >= 6  # /ready said 503 until the (shortened) load was over
