"""CUDA user space from torch's wheels on a bootstrapped base, and weights with a `mode` owned by the service user."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, REPO
from stack_specs import CU124, CU124_LOCK, spec_on_stack

from imagekit.compat import pypi_build
from imagekit.compat.check import check_spec, check_versions, notes
from imagekit.errors import SpecError
from imagekit.render.dockerfile import render_dockerfile
from imagekit.render.scripts import render_scripts
from imagekit.spec import LoadedSpec, load_spec, parse_spec
from imagekit.verify.report import compare

GPU_SPEC = EXAMPLES / "tts" / "imagekit.yaml"
REAL_CPU_HOST = REPO / "tests" / "fixtures" / "probe-tts-cpu-host.json"


def _gpu_variant(tmp_path: Path, old: str, new: str) -> LoadedSpec:
    text = GPU_SPEC.read_text(encoding="utf-8")
    assert old in text, old
    for name in ("requirements.lock", "models", "app", "reference"):
        src = GPU_SPEC.parent / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, dirs_exist_ok=True)
        else:
            shutil.copy(src, tmp_path / name)
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(text.replace(old, new), encoding="utf-8")
    return parse_spec(spec.read_text(encoding="utf-8"), spec)


# --- which CUDA the torch wheels carry ----------------------------------------------------------------------------


def test_pypi_builds_of_the_seed_torches() -> None:
    b251, b1131 = pypi_build("2.5.1"), pypi_build("1.13.1")
    assert b251 is not None and (b251.cuda, b251.cudnn, b251.confidence) == ("12.4", "9", "verified")
    assert b1131 is not None and (b1131.cuda, b1131.cudnn) == ("11.7", "8")
    assert "Requires-Dist of torch-2.5.1-" in b251.source and "https://pypi.org/simple" in b251.source
    assert b251.cudnn_version == "9.1.0.70" and "nvidia-cuda-runtime-cu12" in b251.wheels


def test_the_gpu_example_pins_are_what_pypis_torch_carries() -> None:
    loaded = load_spec(GPU_SPEC)
    assert check_spec(loaded) == [] and notes(loaded) == []
    assert check_versions(cuda="13.0", cudnn="9", python="3.11", torch="2.14.1", wheels=True) == []
    assert check_versions(cuda="12.4", cudnn="9", python="3.11", torch="2.5.1", wheels=True) == []


def test_a_cudnn_the_wheels_do_not_bring_is_an_error(tmp_path: Path) -> None:
    loaded = _gpu_variant(tmp_path, 'cudnn: "9"', 'cudnn: "8"')
    problems = check_spec(loaded)
    assert [p.message for p in problems] == [
        "cuDNN 8 is not shipped for CUDA 13.0; it has cuDNN 9",
        "torch 2.14.1's CUDA 13.0 wheels bring cuDNN 9 (nvidia-cudnn), not cuDNN 8",
        "requirements.lock pins nvidia-cudnn-cu13==9.24.0.43 (cuDNN 9), but the spec says cuDNN 8",
    ]
    assert problems[1].path == "layers.base.cudnn" and 'set cudnn: "9"' in problems[1].hint


def test_another_cuda_build_needs_pytorchs_index_and_says_so(tmp_path: Path) -> None:
    loaded = _gpu_variant(tmp_path, 'cuda: "13.0"', 'cuda: "12.8"')
    # the example's lock pins the CUDA 13 wheels (no -cu13 suffix): the lock check refuses CUDA 12.8 with it
    (problem,) = check_spec(loaded)
    assert problem.path == "layers.base.cuda"
    assert problem.message == (
        "requirements.lock pins nvidia-cuda-runtime==13.0.96 (CUDA 13.0), but the spec says CUDA 12.8"
    )
    (note,) = notes(loaded)
    assert note.message == (
        "torch 2.14.1 on PyPI is the CUDA 13.0 build; CUDA 12.8 comes from PyTorch's index "
        "https://download.pytorch.org/whl/cu128"
    )


@pytest.mark.parametrize(
    ("lock", "cuda", "message"),
    [
        ("nvidia-cuda-runtime-cu12==12.4.127\n", "13.0", "pins nvidia-cuda-runtime-cu12==12.4.127 (CUDA 12.4)"),
        ("cuda-toolkit==13.0.3.0\n", "12.8", "pins cuda-toolkit==13.0.3.0 (CUDA 13.0)"),
        ("nvidia-cuda-runtime==13.0.96\ncuda-toolkit==13.0.3.0\n", "13.0", ""),
        ("nvidia-cuda-runtime-cu12==12.8.90\n", "12.8", ""),
    ],
    ids=["cu12-wheels-on-cuda-13", "cu13-toolkit-on-cuda-12.8", "cu13-names-agree", "cu12-names-agree"],
)
def test_the_locks_cuda_wheels_must_be_the_specs_cuda(tmp_path: Path, lock: str, cuda: str, message: str) -> None:
    loaded = _gpu_variant(tmp_path, 'cuda: "13.0"', f'cuda: "{cuda}"')
    (tmp_path / "requirements.lock").write_text(lock, encoding="utf-8")
    found = [p.message for p in check_spec(loaded) if p.message.startswith("requirements.lock")]
    assert found == ([f"requirements.lock {message}, but the spec says CUDA {cuda}"] if message else [])


def test_cuda_on_a_bootstrapped_base_without_torch_is_an_error() -> None:
    findings = check_versions(cuda="12.4", wheels=True)
    assert [f.message for f in findings] == [
        "CUDA 12.4 on a bootstrapped base comes from torch's nvidia-* wheels, but no layer pins torch"
    ]
    assert "2.5.x, 2.6.0" in findings[0].hint
    assert check_versions(cuda="12.4") == []  # a CUDA base image brings its own


# --- weights with a mode ------------------------------------------------------------------------------------------


def test_mode_is_normalized_and_unsafe_modes_are_refused(tmp_path: Path) -> None:
    sha = 'sha256: "4bfe58c56b295277295388d9bef54cab32932c8f79d9f20b987a3fb65289319e"'
    loaded = _gpu_variant(tmp_path, sha, sha + ", mode: '600'")
    assert loaded.spec.layers["app"].models[0].mode == "0600"
    for bad, why in (("'0666'", "lets group or others write"), ("'0200'", "does not let the owner")):
        with pytest.raises(SpecError, match=why):
            _gpu_variant(tmp_path, sha, f"{sha}, mode: {bad}")


def test_a_moded_model_is_copied_owned_by_the_service_user(tmp_path: Path) -> None:
    sha = 'sha256: "4bfe58c56b295277295388d9bef54cab32932c8f79d9f20b987a3fb65289319e"'
    loaded = _gpu_variant(tmp_path, sha, sha + ', mode: "0600"')
    dockerfile = render_dockerfile(loaded, "tts-inference")
    assert "COPY --chown=app:app --chmod=0600 models/tts.pt /opt/models/tts.pt" in dockerfile
    app = render_scripts(loaded, "tts-inference", "ami")["app"]
    assert "chown app:app /opt/models/tts.pt\n" in app and "chmod 0600 /opt/models/tts.pt\n" in app
    # without a mode: root-owned 0444, as a reproducible tar (imagekit/weights_tar.py) holding the file as 0444
    plain = render_dockerfile(load_spec(GPU_SPEC), "tts-inference")
    assert re.search(r"^ADD (examples/tts/)?\.imagekit/weights/[0-9a-f]{32}\.tar /$", plain, re.M)
    assert "--chmod=0600" not in plain


def _cu124_variant(folder: Path, old: str, new: str) -> LoadedSpec:
    """The spec of the stack the real CPU-host probe came from (torch 2.5.1+cu124), with one change."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = spec_on_stack(folder, CU124, CU124_LOCK)
    text = spec.read_text(encoding="utf-8")
    assert old in text, old
    spec.write_text(text.replace(old, new), encoding="utf-8")
    return parse_spec(spec.read_text(encoding="utf-8"), spec)


def _moded_probe(**entry: Any) -> dict[str, Any]:
    probe: dict[str, Any] = copy.deepcopy(json.loads(REAL_CPU_HOST.read_text(encoding="utf-8")))
    probe["models"]["/opt/models/tts.pt"].update(entry)
    return probe


def test_a_moded_model_must_be_readable_by_the_user_and_writable_by_nobody_else(tmp_path: Path) -> None:
    sha = 'sha256: "4bfe58c56b295277295388d9bef54cab32932c8f79d9f20b987a3fb65289319e"'
    loaded = _cu124_variant(tmp_path, sha, sha + ', mode: "0600"')
    uid = _moded_probe()["user"]["uid"]
    ok = _moded_probe(mode="0600", uid=uid, writable=True, readable=True)  # the owner may write its own 0600 file
    assert compare(ok, loaded, "tts-inference", gpu="optional") == []
    wrong = compare(_moded_probe(mode="0644", uid=0, readable=True), loaded, "tts-inference", gpu="optional")
    assert wrong == [
        "model /opt/models/tts.pt: expected mode 0600 (writable by nobody but app), found 0644",
        f"model /opt/models/tts.pt: expected owned by app (uid {uid}), found uid 0",
    ]
    unreadable = compare(_moded_probe(mode="0600", uid=uid, readable=False), loaded, "tts-inference", gpu="optional")
    assert unreadable == ["model /opt/models/tts.pt: expected readable by app (mode 0600), found not readable"]
    # and the default rule still holds for weights without a mode
    default = compare(
        _moded_probe(writable=True), _cu124_variant(tmp_path / "plain", sha, sha), "tts-inference", gpu="optional"
    )
    assert default == ["model /opt/models/tts.pt: expected read-only for app, found writable by app (uid 999)"]
