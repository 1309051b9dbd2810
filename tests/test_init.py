"""`imagekit init`: an app folder in, a commented spec out that validates against the spec and the matrix."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from conftest import copy_example
from typer.testing import CliRunner

from imagekit.api.spec import validate
from imagekit.cli import app

SERVER = '''\
"""A tiny inference server."""
import argparse
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/ready":
            self.send_response(200)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9090)
    args = parser.parse_args()
    HTTPServer(("0.0.0.0", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
'''
LOCK = """\
# pip-compile output
--extra-index-url https://download.pytorch.org/whl/cu121
filelock==3.16.1
torch==2.4.1+cu121
nvidia-cudnn-cu12==9.1.0.70
typing-extensions==4.12.2
"""
WEIGHTS = b"weights" * 1000


def _app(folder: Path, lock: str = LOCK, lock_name: str = "requirements.lock") -> Path:
    (folder / "app").mkdir(parents=True)
    (folder / "app" / "__init__.py").write_text("")
    (folder / "app" / "server.py").write_text(SERVER)
    (folder / "models").mkdir()
    (folder / "models" / "model.safetensors").write_bytes(WEIGHTS)
    (folder / lock_name).write_text(lock)
    return folder


def _init(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["init", *args])
    return result.exit_code, result.output


def test_init_writes_a_spec_that_validates_and_refuses_a_second_time(tmp_path: Path) -> None:
    folder = _app(tmp_path / "my-svc")
    code, output = _init(str(folder))
    assert code == 0, output
    spec_file = folder / "imagekit.yaml"
    loaded = validate(spec_file)  # keys, graph, paths, the weight digest and the compatibility matrix
    spec = loaded.spec
    assert list(spec.layers) == ["base", "runtime", "app"]
    assert spec.name == "my-svc" and list(spec.images) == ["my-svc"]
    resolved = loaded.resolved("my-svc")
    # the torch pin and its CUDA build come from the lock (+cu121), cuDNN from the nvidia-cudnn wheel
    assert (resolved.torch, resolved.cuda, resolved.cudnn) == ("2.4.1", "12.1", "9")
    assert spec.layers["base"].from_ is not None and spec.layers["base"].from_.docker == (
        "nvidia/cuda:12.1.1-cudnn-runtime-ubuntu22.04"
    )
    assert spec.layers["runtime"].requirements == "requirements.lock"
    model = spec.layers["app"].models[0]
    assert model.src == "models/model.safetensors" and model.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert resolved.command == ("python", "-m", "app.server", "--port", "9090") and resolved.port == 9090
    assert spec.verify.health is not None and spec.verify.health.path == "/ready"
    assert spec.verify.gpu == "required"
    text = spec_file.read_text()
    assert text.count("\n#") >= 3 and "imagekit init" in text  # commented for the person who edits it next
    assert "found model: models/model.safetensors" in output

    before = text
    code, output = _init(str(folder))
    assert code == 2, output
    assert "already exists" in output and "never overwrites" in output
    assert spec_file.read_text() == before


def test_init_cpu_starts_from_a_bootstrap_base(tmp_path: Path) -> None:
    folder = _app(tmp_path / "svc")
    code, output = _init(str(folder), "--cpu")
    assert code == 0, output
    loaded = validate(folder / "imagekit.yaml")
    base = loaded.spec.layers["base"].from_
    assert base is not None and base.bootstrap is not None and base.bootstrap.suite == "bookworm"
    resolved = loaded.resolved("svc")
    assert (resolved.cuda, resolved.torch, resolved.python) == ("none", "2.4.1", "3.11")
    assert loaded.spec.verify.gpu == "optional"
    assert "+cu121" in output  # says the CUDA build in the lock is not what a CPU image installs


def test_init_on_the_example_app_finds_its_cuda_from_the_lock(tmp_path: Path) -> None:
    folder = copy_example(tmp_path / "tts")
    for spec in folder.glob("imagekit*.yaml"):
        spec.unlink()
    code, output = _init(str(folder))
    assert code == 0, output
    loaded = validate(folder / "imagekit.yaml")
    resolved = loaded.resolved("tts")
    # the lock pins no torch, but NVIDIA's CUDA 13 wheels: nvidia-cuda-runtime==13.0.96 (no -cu13 suffix since
    # CUDA 13) and nvidia-cudnn-cu13==9.24.0.43
    assert (resolved.cuda, resolved.cudnn, resolved.python) == ("13.0", "9", "3.11")
    models = {m.src: m.sha256 for m in loaded.spec.layers["app"].models}
    assert models["models/tts.pt"] == "4bfe58c56b295277295388d9bef54cab32932c8f79d9f20b987a3fb65289319e"
    assert resolved.port == 7860 and resolved.command is not None and "app.server" in resolved.command


def test_a_lock_with_torch_and_the_cuda_wheels_starts_from_a_bootstrap_base(tmp_path: Path) -> None:
    lock = "torch==2.5.1\nnvidia-cuda-runtime-cu12==12.4.127\nnvidia-cudnn-cu12==9.1.0.70\nfilelock==3.16.1\n"
    folder = _app(tmp_path / "wheels-svc", lock=lock)
    code, output = _init(str(folder))
    assert code == 0, output
    loaded = validate(folder / "imagekit.yaml")
    resolved = loaded.resolved("wheels-svc")
    assert (resolved.torch, resolved.cuda, resolved.cudnn) == ("2.5.1", "12.4", "9")
    # CUDA comes from the wheels: a bootstrapped base that builds here, no nvidia/cuda image from a registry
    base = loaded.spec.layers["base"].from_
    assert base is not None and base.bootstrap is not None and base.docker is None
    assert resolved.driver is not None  # the AMI still gets the driver branch CUDA 12.4 needs


# torch 2.14.1's closure for its PyPI (CUDA 13.0) build, as the index resolved it on 2026-12-04 (a part of it)
CU13_LOCK = """\
torch==2.14.1
cuda-toolkit==13.0.3.0
nvidia-cublas==13.1.1.3
nvidia-cuda-runtime==13.0.96
nvidia-cudnn-cu13==9.24.0.43
nvidia-nccl-cu13==2.30.7
filelock==4.3.2
"""


@pytest.mark.parametrize(
    "lock",
    [CU13_LOCK, CU13_LOCK.replace("nvidia-cuda-runtime==13.0.96\n", "")],
    ids=["cuda-runtime-wheel", "cuda-toolkit-metapackage-only"],
)
def test_a_cuda13_torch_lock_writes_a_spec_that_validates_with_cuda_13(tmp_path: Path, lock: str) -> None:
    folder = _app(tmp_path / "cu13-svc", lock=lock)
    code, output = _init(str(folder))
    assert code == 0, output
    loaded = validate(folder / "imagekit.yaml")
    resolved = loaded.resolved("cu13-svc")
    assert (resolved.torch, resolved.cuda, resolved.cudnn) == ("2.14.1", "13.0", "9")
    assert 'cuda: "13.0"' in (folder / "imagekit.yaml").read_text()
    base = loaded.spec.layers["base"].from_
    assert base is not None and base.bootstrap is not None  # CUDA from the wheels: a bootstrapped base
    assert resolved.driver == "580"  # the driver branch CUDA 13.0 needs (for the AMI)


def test_a_uv_lock_gives_the_torch_build_and_says_how_to_export(tmp_path: Path) -> None:
    folder = tmp_path / "uvapp"
    folder.mkdir()
    (folder / "main.py").write_text(SERVER)
    (folder / "uv.lock").write_text(
        'version = 1\n\n[[package]]\nname = "numpy"\nversion = "2.1.0"\nsource = { registry = "https://pypi.org/simple" }\n\n'
        '[[package]]\nname = "torch"\nversion = "2.5.1+cu124"\nsource = { registry = "https://download.pytorch.org/whl/cu124" }\n'
    )
    code, output = _init(str(folder))
    assert code == 0, output
    loaded = validate(folder / "imagekit.yaml")
    assert (loaded.resolved("uvapp").torch, loaded.resolved("uvapp").cuda) == ("2.5.1", "12.4")
    assert "uv export" in (folder / "imagekit.yaml").read_text()
    assert loaded.spec.layers["app"].copy_[0].src == "main.py"
    assert loaded.resolved("uvapp").command == ("python", "-m", "main", "--port", "9090")


def test_loose_requirements_go_under_pip(tmp_path: Path) -> None:
    folder = _app(
        tmp_path / "loose", lock="fastapi>=0.110\ntorch==2.5.1\nuvicorn==0.30.0\n", lock_name="requirements.txt"
    )
    code, output = _init(str(folder))
    assert code == 0, output
    runtime = validate(folder / "imagekit.yaml").spec.layers["runtime"]
    assert runtime.requirements is None
    assert runtime.pip == ("fastapi>=0.110", "uvicorn==0.30.0") and runtime.torch == "2.5.1"


def test_a_torch_the_matrix_does_not_know_for_cuda_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    folder = _app(tmp_path / "new", lock="torch==2.16.0\n")
    code, output = _init(str(folder))
    assert code == 2, output
    assert "torch 2.16.0" in output and "--cpu" in output
    assert not (folder / "imagekit.yaml").exists()


def test_init_without_a_folder_uses_the_current_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _app(tmp_path / "here")
    monkeypatch.chdir(folder)
    code, output = _init("--cpu")
    assert code == 0, output
    assert (folder / "imagekit.yaml").is_file()
    shutil.rmtree(folder / "models")
    os.remove(folder / "imagekit.yaml")
    code, output = _init(str(tmp_path / "missing"))
    assert code == 2 and "not a folder" in output
