"""`imagekit validate`: every case of issue sections 3 and 4 exits 2 with an exact FILE:LINE: key: message."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagekit.cli import app
from imagekit.compat import matrix
from imagekit.spec import load_spec

WEIGHTS = b"not really a model, but pinned like one"
SHA = hashlib.sha256(WEIGHTS).hexdigest()

SPEC = f"""\
version: 1
name: tts
layers:
  base:
    from:
      docker: nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
      ami: {{name: "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*", owners: ["099720109477"]}}
    cuda: "12.4"
    cudnn: "9"
    driver: "550"
    apt: [ffmpeg, libsndfile1]
  runtime:
    parent: base
    python: "3.11"
    torch: "2.5.1"
    requirements: requirements.lock
  app:
    parent: runtime
    copy: [{{src: app/, dest: /opt/app/app}}]
    models:
      - {{src: models/tts.pt, dest: /opt/models/tts.pt, sha256: "{SHA}"}}
    env: {{MODEL_PATH: /opt/models/tts.pt}}
    user: app
    command: ["python", "-m", "app.server", "--port", "7860"]
    port: 7860
images:
  tts-inference:
    leaf: app
    targets: [docker, ami]
verify:
  gpu: required
  health: {{path: /ready, timeout: 600}}
  smoke: {{method: POST, path: /synthesize, json: {{text: "你好，世界"}}, expect: {{status: 200, min_bytes: 8000}}}}
"""


@pytest.fixture
def spec_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the GPU example's shape: app/, a lock file and pinned weights; the cwd, so paths are short."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "server.py").write_text("print('serving')\n")
    (tmp_path / "requirements.lock").write_text("numpy==2.1.3\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tts.pt").write_bytes(WEIGHTS)
    (tmp_path / "imagekit.yaml").write_text(SPEC)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def validate(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", *args])
    return result.exit_code, result.output


def line(text: str, needle: str) -> int:
    """1-based line of the first line containing needle."""
    for i, row in enumerate(text.splitlines(), 1):
        if needle in row:
            return i
    raise AssertionError(f"{needle!r} not in the spec")


def mutate(old: str, new: str) -> str:
    assert old in SPEC, old
    return SPEC.replace(old, new, 1)


def test_the_example_shape_validates(spec_dir: Path) -> None:
    code, output = validate()
    assert code == 0, output
    assert "3 layers, 1 images" in output
    code, output = validate("-f", "imagekit.yaml", "--json")
    assert code == 0, output
    assert '"ok": true' in output


@pytest.mark.parametrize("name", ["imagekit.yaml", "imagekit-cpu.yaml"])
def test_the_committed_examples_validate(name: str) -> None:
    # The GPU example (CUDA 13.0, torch 2.14.1) and the CPU one (torch 2.13.0 CPU) pass the matrix
    # and their files match their pins.
    from imagekit.api.spec import validate as api_validate
    from imagekit.compat.check import notes

    path = Path(__file__).resolve().parent.parent / "examples" / "tts" / name
    loaded = api_validate(path)
    assert notes(loaded) == []


GENERATED = f"{matrix().generated['date']} from {matrix().generated['index']}"  # when and where the matrix was read
# (what the issue names, old text, new text, needle for the line, expected message after "bad.yaml:LINE: ")
CASES = [
    (
        "unknown key",
        'torch: "2.5.1"',
        'torchh: "2.5.1"',
        "torchh",
        "layers.runtime.torchh: unknown key (did you mean 'torch'?)",
    ),
    (
        "unknown key, nested",
        "health: {path: /ready",
        "health: {pth: /ready",
        "health:",
        "verify.health.pth: unknown key (did you mean 'path'?)",
    ),
    (
        "wrong type",
        "port: 7860",
        "port: seventy",
        "port: seventy",
        "layers.app.port: input should be a valid integer, unable to parse string as an integer",
    ),
    (
        "wrong type, list",
        "apt: [ffmpeg, libsndfile1]",
        "apt: ffmpeg",
        "apt: ffmpeg",
        "layers.base.apt: input should be a valid tuple, got str",
    ),
    (
        "unquoted version",
        'python: "3.11"',
        "python: 3.10",
        "python: 3.10",
        'layers.runtime.python: write versions as quoted strings such as "3.10": YAML read this one as the number 3.1',
    ),
    (
        "missing parent",
        "    parent: base\n",
        "",
        "  runtime:",
        "layers.runtime: a root layer (no parent) needs 'from'",
    ),
    (
        "unknown parent",
        "parent: runtime",
        "parent: runtim",
        "parent: runtim",
        "layers.app.parent: unknown parent 'runtim' (did you mean 'runtime'?)",
    ),
    (
        "unknown leaf",
        "leaf: app",
        "leaf: ap",
        "leaf: ap",
        "images.tts-inference.leaf: unknown layer 'ap' (did you mean 'app'?)",
    ),
    (
        "unknown target",
        "targets: [docker, ami]",
        "targets: [docker, vm]",
        "targets:",
        "images.tts-inference.targets[1]: input should be 'docker' or 'ami', got 'vm'",
    ),
    (
        "model without sha256",
        f', sha256: "{SHA}"',
        "",
        "src: models/tts.pt",
        "layers.app.models[0].sha256: required key is missing",
    ),
    (
        "sha256 not 64 hex digits",
        SHA,
        SHA[:-1] + "g",
        "src: models/tts.pt",
        "layers.app.models[0].sha256: sha256 must be 64 hex digits, got 64 characters",
    ),
    (
        "relative dest",
        "dest: /opt/app/app",
        "dest: opt/app",
        "dest: opt/app",
        "layers.app.copy[0].dest: destination 'opt/app' is not absolute",
    ),
    (
        "copy src escaping the folder",
        "src: app/",
        "src: ../etc/",
        "src: ../etc/",
        "layers.app.copy[0].src: '../etc/' escapes the spec's folder (keep sources next to imagekit.yaml)",
    ),
    (
        "model src escaping the folder",
        "src: models/tts.pt",
        "src: ../tts.pt",
        "src: ../tts.pt",
        "layers.app.models[0].src: '../tts.pt' escapes the spec's folder "
        "(keep weights next to imagekit.yaml, or use https:// or s3://)",
    ),
    (
        "local model whose digest differs",
        SHA,
        "0" * 64,
        "src: models/tts.pt",
        f"layers.app.models[0].sha256: models/tts.pt has sha256 {SHA}, the spec pins {'0' * 64} "
        "(update the pin if the new weights are intended)",
    ),
    (
        "torch 2.5.1 with CUDA 11.6",
        'cuda: "12.4"\n    cudnn: "9"',
        'cuda: "11.6"\n    cudnn: "8"',
        'torch: "2.5.1"',
        "layers.runtime.torch: torch 2.5.1 is built for CUDA 11.8, 12.1, 12.4, not CUDA 11.6 "
        "(torch releases built for CUDA 11.6: 1.12.x, 1.13.x)",
    ),
    (
        "Python 3.13 with torch 2.4",
        'python: "3.11"\n    torch: "2.5.1"',
        'python: "3.13"\n    torch: "2.4"',
        "python:",
        "layers.runtime.python: Python 3.13 has no torch 2.4 wheels; torch 2.4 supports Python 3.8, 3.9, 3.10, 3.11, "
        "3.12 (torch releases for Python 3.13: 2.5, 2.6, 2.7, 2.8, 2.9)",
    ),
    (
        "driver branch too old",
        'driver: "550"',
        'driver: "535"',
        "driver:",
        "layers.base.driver: driver branch 535 is too old for CUDA 12.4, which needs 550 or newer (>= 550.54.14) "
        "(use driver 550 or newer, or a CUDA version driver 535 runs: "
        "10.2, 11.3, 11.4, 11.5, 11.6, 11.7, 11.8, 12.0, 12.1, 12.2)",
    ),
    (
        "cudnn not shipped for the CUDA version",
        'cudnn: "9"',
        'cudnn: "8"',
        "cudnn:",
        "layers.base.cudnn: cuDNN 8 is not shipped for CUDA 12.4; it has cuDNN 9 "
        "(CUDA versions with cuDNN 8: 10.2, 11.3, 11.4, 11.5, 11.6, 11.7, 11.8, 12.0, 12.1, 12.2)",
    ),
    (
        "unknown CUDA version",
        'cuda: "12.4"',
        'cuda: "12.7"',
        '"12.7"',
        "layers.base.cuda: unknown CUDA version 12.7 (known: 10.2, 11.3, 11.4, 11.5, 11.6, 11.7, 11.8, 12.0, 12.1, 12.2, "
        '12.3, 12.4, 12.5, 12.6, 12.8, 12.9, 13.0, 13.2, or "none" for CPU)',
    ),
    (
        "unknown torch version with a CUDA build",
        'torch: "2.5.1"',
        'torch: "2.9.7"',
        "torch:",
        "layers.runtime.torch: unknown torch version 2.9.7 for CUDA 12.4 (the matrix knows torch 1.12.0 to 2.15.0)",
    ),
    (
        "torch newer than the matrix",
        'torch: "2.5.1"',
        'torch: "2.16.0"',
        "torch:",
        "layers.runtime.torch: torch 2.16.0 is newer than the compatibility matrix (newest known: torch 2.15.0, "
        f"generated {GENERATED}) (regenerate the matrix from the package index: "
        "`python scripts/gen_compat.py --from-index` (review and commit the diff), or pin torch 2.15.0 or older)",
    ),
]


@pytest.mark.parametrize(("what", "old", "new", "needle", "message"), CASES, ids=[c[0] for c in CASES])
def test_rejected_with_file_line_key(spec_dir: Path, what: str, old: str, new: str, needle: str, message: str) -> None:
    text = mutate(old, new)
    (spec_dir / "bad.yaml").write_text(text)
    code, output = validate("-f", "bad.yaml")
    assert code == 2, output
    assert output.splitlines() == [f"bad.yaml:{line(text, needle)}: {message}"], what
    assert "Traceback" not in output


def test_yaml_syntax_error(spec_dir: Path) -> None:
    (spec_dir / "bad.yaml").write_text(mutate("apt: [ffmpeg, libsndfile1]", "apt: [ffmpeg, libsndfile1"))
    code, output = validate("-f", "bad.yaml")
    assert code == 2
    assert output.splitlines() == [
        "bad.yaml:12: YAML syntax error: while parsing a flow sequence expected ',' or ']', but got ':'"
    ]


def test_parent_cycle(spec_dir: Path) -> None:
    text = mutate("parent: base", "parent: app")
    (spec_dir / "bad.yaml").write_text(text)
    code, output = validate("-f", "bad.yaml")
    assert code == 2
    assert output.splitlines() == [
        f"bad.yaml:{line(text, 'parent: app')}: layers.runtime.parent: parent cycle: runtime -> app -> runtime",
        f"bad.yaml:{line(text, 'parent: runtime')}: layers.app.parent: parent cycle: app -> runtime -> app",
    ]


def test_every_problem_is_reported_at_once(spec_dir: Path) -> None:
    text = mutate('torch: "2.5.1"', 'torchh: "2.5.1"').replace("leaf: app", "leaf: ap")
    (spec_dir / "bad.yaml").write_text(text)
    code, output = validate("-f", "bad.yaml")
    assert code == 2
    # Key errors stop the loader before the graph is checked: one pass of fixes, then the next.
    assert output.splitlines() == ["bad.yaml:15: layers.runtime.torchh: unknown key (did you mean 'torch'?)"]


def test_compat_problem_is_at_the_layer_that_sets_the_key(spec_dir: Path) -> None:
    # The app layer overrides base's cuda: the problems point at the layer whose value wins.
    text = mutate("    parent: runtime\n", '    parent: runtime\n    cuda: "11.6"\n')
    (spec_dir / "bad.yaml").write_text(text)
    code, output = validate("-f", "bad.yaml")
    assert code == 2
    assert output.splitlines() == [
        "bad.yaml:9: layers.base.cudnn: cuDNN 9 is not shipped for CUDA 11.6; it has cuDNN 8 "
        "(CUDA versions with cuDNN 9: 11.8, 12.0, 12.1, 12.2, 12.3, 12.4, 12.5, 12.6, 12.8, 12.9, 13.0, 13.2)",
        "bad.yaml:15: layers.runtime.torch: torch 2.5.1 is built for CUDA 11.8, 12.1, 12.4, not CUDA 11.6 "
        "(torch releases built for CUDA 11.6: 1.12.x, 1.13.x)",
    ]
    text = mutate("    parent: runtime\n", '    parent: runtime\n    cuda: "12.7"\n')
    (spec_dir / "bad.yaml").write_text(text)
    code, output = validate("-f", "bad.yaml")
    assert code == 2
    at = line(text, '"12.7"')
    assert [row.split(" (")[0] for row in output.splitlines()] == [
        f"bad.yaml:{at}: layers.app.cuda: unknown CUDA version 12.7"
    ]


@pytest.mark.parametrize(
    "text",
    [
        'version: 1\nname: cpu\nlayers: {a: {from: {docker: "debian:bookworm"}, cuda: "none", python: "3.11", '
        'torch: "2.13.0"}}\nimages: {cpu: {leaf: a}}\n',
        'version: 1\nname: cpu\nlayers: {a: {from: {docker: "debian:bookworm"}, python: "3.12", torch: "2.14.0", '
        'driver: "390"}}\nimages: {cpu: {leaf: a}}\n',
        'version: 1\nname: seed\nlayers: {a: {from: {docker: "x"}, cuda: "11.7", python: "3.10", torch: "1.13.1"}}\n'
        "images: {s: {leaf: a}}\n",
        'version: 1\nname: seed\nlayers: {a: {from: {docker: "x"}, cuda: "11.6", torch: "1.13.1"}}\n'
        "images: {s: {leaf: a}}\n",
    ],
    ids=["torch-2.13-cpu", "torch-2.14-cpu-from-the-index", "seed-cu117", "seed-cu116"],
)
def test_cpu_and_seed_specs_are_accepted(spec_dir: Path, text: str) -> None:
    (spec_dir / "ok.yaml").write_text(text)
    code, output = validate("-f", "ok.yaml")
    assert code == 0, output


def test_a_torch_newer_than_the_matrix_exits_2_with_the_regenerate_command(spec_dir: Path) -> None:
    # CPU builds too: a stale matrix is a clear word (which release it knows last, how to regenerate it)
    (spec_dir / "new.yaml").write_text(
        'version: 1\nname: cpu\nlayers: {a: {from: {docker: "x"}, torch: "2.16.0"}}\nimages: {cpu: {leaf: a}}\n'
    )
    code, output = validate("-f", "new.yaml")
    assert code == 2, output
    assert "layers.a.torch: torch 2.16.0 is newer than the compatibility matrix (newest known: torch 2.15.0" in output
    assert "python scripts/gen_compat.py --from-index" in output


GARBAGE: list[bytes] = [
    b"",
    b"[1, 2]",
    b"version: 2",
    b"{{{",
    b"\xff\xfe\x00garbage",
    b"!!python/object/apply:os.system ['true']",
    b"a: &a [*a, *a]",
    b"- - - -",
    b"? [a]\n: b",
    b"version: 1\nname: x\nlayers: 5\nimages: []",
    b"version: 1\nname: x\nlayers: {a: {parent: a}}\nimages: {x: {leaf: a}}",
    b"version: 1\nname: x\nlayers: {a: {from: {}, models: [{src: /etc/passwd, dest: x, sha256: 1}]}}\nimages: {}",
    b"\t\tversion: 1",
    b"\x08",
    b"version: 1\nname: \x07x",
    b"x: 1e999999\n2001-01-01: 3\nnull: ~\n1: 2",
    b"version: 1\nname: x\nlayers: {a: {from: {docker: x}, cuda: [12], torch: {a: 1}}}\nimages: {x: {leaf: a}}",
    b"version: 1\nname: x\nlayers: {a: {from: {docker: x}, cuda: '', torch: '+', driver: 'x'}}\nimages: {x: {leaf: a}}",
]


@pytest.mark.parametrize("raw", GARBAGE)
def test_garbage_never_gives_a_traceback(spec_dir: Path, raw: bytes) -> None:
    (spec_dir / "g.yaml").write_bytes(raw)
    code, output = validate("-f", "g.yaml")
    assert code == 2, output
    assert "Traceback" not in output
    assert "unexpected error" not in output
    for row in output.splitlines():
        assert row.startswith("g.yaml:"), row


def test_missing_file(spec_dir: Path) -> None:
    code, output = validate("-f", "nope.yaml")
    assert code == 2
    assert output.splitlines() == ["nope.yaml: no such file (pass -f FILE or run in a folder with imagekit.yaml)"]


def test_the_installed_command_exits_2_without_a_traceback(spec_dir: Path) -> None:
    # The console script end to end (not only typer's runner): exit code and stderr as a user sees them.
    import subprocess
    import sys

    (spec_dir / "bad.yaml").write_text(mutate("leaf: app", "leaf: ap"))
    exe = Path(sys.executable).parent / "imagekit"
    done = subprocess.run([str(exe), "validate", "-f", "bad.yaml"], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"bad.yaml:{line(SPEC, 'leaf: app')}: images.tts-inference.leaf: unknown layer 'ap' (did you mean 'app'?)"
    ]
    assert done.stdout == ""


def test_a_layer_shared_by_two_images_is_reported_once(spec_dir: Path) -> None:
    # Both images' chains pass through runtime, which sets the bad driver: one line, not one per image.
    text = mutate('torch: "2.5.1"', 'torch: "2.5.1"\n    driver: "535"')
    text = text.replace("images:\n", "images:\n  first:\n    leaf: runtime\n", 1)
    (spec_dir / "bad.yaml").write_text(text)
    code, output = validate("-f", "bad.yaml")
    assert code == 2, output
    assert output.splitlines() == [
        f"bad.yaml:{line(text, '535')}: layers.runtime.driver: driver branch 535 is too old for CUDA 12.4, which "
        "needs 550 or newer (>= 550.54.14) (use driver 550 or newer, or a CUDA version driver 535 runs: "
        "10.2, 11.3, 11.4, 11.5, 11.6, 11.7, 11.8, 12.0, 12.1, 12.2)"
    ]


def test_unknown_key_hints_at_every_depth(tmp_path: Path) -> None:
    """The `did you mean` lookup walks dicts, lists and optional sub-models alike."""
    spec = tmp_path / "imagekit.yaml"
    spec.write_text(
        "version: 1\nname: x\nlayers:\n  base:\n    from: {dockr: a}\n  app:\n    parent: base\n"
        "    models: [{src: m, dest: /m, sha: x}]\nimages:\n  i: {leaf: app, verify: {gpuu: optional}}\n"
        "verify:\n  smoke: {path: /s, expect: {statu: 200}}\n"
    )
    from imagekit.errors import SpecError

    with pytest.raises(SpecError) as info:
        load_spec(spec)
    text = str(info.value)
    for line in (
        ":5: layers.base.from.dockr: unknown key (did you mean 'docker'?)",
        ":8: layers.app.models[0].sha: unknown key (did you mean 'sha256'?)",
        ":10: images.i.verify.gpuu: unknown key (did you mean 'gpu'?)",
        ":12: verify.smoke.expect.statu: unknown key (did you mean 'status'?)",
    ):
        assert line in text, text
