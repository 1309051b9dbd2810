"""`imagekit init`: look at an app folder and write a first imagekit.yaml (pure: facts in, spec text out).

What a folder tells: the requirements (a lock, requirements.txt, uv/poetry locks, pyproject), the torch pin and its
CUDA build (a `+cu124` label, the nvidia-cuda-runtime wheel pinned beside it, a PyTorch index line), model files
with their sha256, and where a server is found, its module, port and health route. Versions are chosen so that the
compatibility matrix accepts them; what could not be told is left as a comment to fill in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imagekit import compat
from imagekit.compat.check import check_versions
from imagekit.spec import NAME_RE

MODEL_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".onnx", ".ckpt", ".gguf", ".h5", ".tflite", ".msgpack")
SKIP_DIRS = {".git", ".hg", ".venv", "venv", "env", "node_modules", "__pycache__", ".imagekit", ".tox", "build", "dist"}
LOCK_NAMES = ("requirements.lock", "requirements-lock.txt", "requirements.txt")
CPU_PYTHON = "3.11"  # the python3 of the Debian bookworm base (--cpu)
GPU_PYTHON = "3.11"
DEFAULT_CUDA = "12.4"
# nvidia/cuda image tags are MAJOR.MINOR.PATCH; the matrix keeps MAJOR.MINOR. Known tags, else PATCH 0.
CUDA_IMAGE_PATCH = {"12.4": "12.4.1", "12.1": "12.1.1", "11.8": "11.8.0", "12.6": "12.6.3", "12.8": "12.8.1"}
SERVER_DEFAULT_PORTS = (("gradio", 7860), ("streamlit", 8501), ("flask", 5000), ("uvicorn", 8000), ("fastapi", 8000))

_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;\\#]+)")
_LOCK_PKG_RE = re.compile(r'\[\[package\]\]\s*\nname\s*=\s*"([^"]+)"\s*\nversion\s*=\s*"([^"]+)"(?P<rest>[^\[]*)')
_INDEX_CU_RE = re.compile(r"download\.pytorch\.org/whl/(cu\d{3,4}|cpu)\b")


@dataclass
class AppFacts:
    """What inspecting an app folder found."""

    name: str
    requirements: str | None = None  # a pip -r file that pins everything (name==version per line)
    pip: list[str] = field(default_factory=list)  # requirement lines to install with their dependencies
    lock_note: str = ""  # how to turn a non-pip lock into a requirements file
    torch: str | None = None  # release, without the local label
    torch_build: str | None = None  # "cu124", "cpu" or None when the lock does not tell
    torch_source: str = ""
    cuda_from_lock: str | None = None
    cudnn_from_lock: str | None = None
    python_wanted: str | None = None
    code: list[tuple[str, str]] = field(default_factory=list)  # (src, dest)
    models: list[tuple[str, str, str]] = field(default_factory=list)  # (src, dest, sha256)
    module: str | None = None  # `python -m MODULE`
    asgi: str | None = None  # module:attr for uvicorn
    port: int | None = None
    port_flag: bool = False  # the server takes --port
    health: str | None = None
    found: list[str] = field(default_factory=list)  # one line per thing found, for the CLI


@dataclass(frozen=True)
class Pins:
    """The versions the spec will pin, chosen against the matrix."""

    cpu: bool
    cuda: str
    cudnn: str | None
    driver: str | None
    python: str
    torch: str | None
    notes: tuple[str, ...] = ()
    cuda_why: str = ""  # where the CUDA version came from, for the comment


def spec_name(folder: Path) -> str:
    """A spec/image name from a folder name (lowercase letters, digits, '.', '_', '-')."""
    name = re.sub(r"[^a-z0-9._-]+", "-", folder.resolve().name.lower()).strip("-._")
    name = name[:63] or "app"
    return name if NAME_RE.fullmatch(name) else f"app-{name}"[:63]


def _walk(root: Path) -> Iterator[Path]:
    for path in sorted(root.iterdir()):
        if path.is_dir():
            if path.name in SKIP_DIRS or path.name.startswith(".") or path.is_symlink():
                continue
            yield from _walk(path)
        elif path.is_file():
            yield path


def _pins(text: str) -> tuple[dict[str, str], list[str], list[str]]:
    """name==version pins (lowercased names), the requirement lines that are not pins, and option lines."""
    pins: dict[str, str] = {}
    loose: list[str] = []
    options: list[str] = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip().rstrip("\\").strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            options.append(line)
            continue
        m = _PIN_RE.match(line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
        else:
            loose.append(line)
    return pins, loose, options


def _torch_from(pins: dict[str, str], index_lines: str, facts: AppFacts, source: str) -> None:
    version = pins.get("torch")
    if version is not None:
        release, _, local = version.partition("+")
        facts.torch, facts.torch_source = release, source
        if local:
            facts.torch_build = local.lower()
    # CUDA 11/12: nvidia-cuda-runtime-cu12==12.4.127; CUDA 13 wheels have no suffix (nvidia-cuda-runtime==13.0.96)
    # and come with the cuda-toolkit metapackage (cuda-toolkit==13.0.3.0), either of which says the CUDA build
    runtime = next((v for k, v in pins.items() if re.fullmatch(r"nvidia-cuda-runtime(?:-cu\d+)?", k)), None)
    runtime = runtime or pins.get("cuda-toolkit")
    if runtime:
        m = re.match(r"(\d+)\.(\d+)", runtime)
        if m:
            facts.cuda_from_lock = f"{int(m[1])}.{int(m[2])}"
    cudnn = next((v for k, v in pins.items() if re.fullmatch(r"nvidia-cudnn-cu\d+", k)), None)
    if cudnn:
        facts.cudnn_from_lock = cudnn.split(".", 1)[0]
    m = _INDEX_CU_RE.search(index_lines)
    if m and facts.torch_build is None and facts.torch is not None:
        facts.torch_build = m.group(1)


def _read_requirements(root: Path, facts: AppFacts) -> None:
    for name in (*LOCK_NAMES, *sorted(p.name for p in root.glob("requirements*.lock"))):
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        pins, loose, options = _pins(text)
        _torch_from(pins, "\n".join(options), facts, name)
        if loose or any(o.startswith(("-r", "-c", "-e", "--requirement", "--editable")) for o in options):
            # the runtime installs a lock with --no-deps: a file with ranges would miss dependencies
            facts.pip = [ln for ln in loose if not ln.lower().startswith("torch")]
            facts.pip += [f"{k}=={v}" for k, v in sorted(pins.items()) if k != "torch"]
            facts.found.append(f"{name}: {len(loose)} of its requirements are not pinned; listed under pip:")
        else:
            facts.requirements = name
            facts.found.append(f"{name}: {len(pins)} pins" + (f", torch {pins['torch']}" if "torch" in pins else ""))
        return
    for name, export in (
        ("uv.lock", "uv export --no-hashes --no-emit-project -o requirements.lock"),
        ("poetry.lock", "poetry export --without-hashes -o requirements.lock"),
        ("pdm.lock", "pdm export --without-hashes -o requirements.lock"),
    ):
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        pins = {}
        sources = []
        for m in _LOCK_PKG_RE.finditer(text):
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
            if m.group(1).lower() == "torch":
                sources.append(m.group("rest"))
        _torch_from(pins, "\n".join(sources), facts, name)
        facts.lock_note = f"{name} is not a pip requirements file: run `{export}` and set requirements: to it"
        facts.found.append(f"{name}: {len(pins)} packages" + (f", torch {pins['torch']}" if "torch" in pins else ""))
        break
    _read_pyproject(root, facts)


def _read_pyproject(root: Path, facts: AppFacts) -> None:
    path = root / "pyproject.toml"
    if not path.is_file():
        return
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        facts.found.append("pyproject.toml: not readable TOML; skipped")
        return
    project = doc.get("project") or {}
    wanted = str(project.get("requires-python") or "")
    m = re.search(r">=\s*3\.(\d+)", wanted)
    # a lower bound: only one above the default Python changes the choice
    if m and facts.python_wanted is None and int(m.group(1)) > int(GPU_PYTHON.split(".")[1]):
        facts.python_wanted = f"3.{int(m.group(1))}"
    deps = [str(d) for d in project.get("dependencies") or []]
    if deps and facts.requirements is None and not facts.pip and not facts.lock_note:
        pins, _, _ = _pins("\n".join(deps))
        if "torch" in pins and facts.torch is None:
            _torch_from(pins, "", facts, "pyproject.toml")
        facts.pip = [d for d in deps if not re.match(r"(?i)torch\b", d)]
        facts.found.append(f"pyproject.toml: {len(deps)} dependencies listed under pip:")


def _read_code(root: Path, facts: AppFacts, files: list[Path]) -> None:
    app_dir = root / "app"
    if app_dir.is_dir():
        facts.code.append(("app/", "/opt/app/app"))
        facts.found.append("app/: copied to /opt/app/app")
        return
    packages = sorted({p.parent for p in files if p.name == "__init__.py" and p.parent.parent == root})
    for pkg in packages:
        if pkg.name in SKIP_DIRS or pkg.name == "tests":
            continue
        facts.code.append((f"{pkg.name}/", f"/opt/app/{pkg.name}"))
    for py in sorted(root.glob("*.py")):
        facts.code.append((py.name, f"/opt/app/{py.name}"))
    if facts.code:
        facts.found.append("code: " + ", ".join(src for src, _ in facts.code) + " copied under /opt/app")


def _module_of(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__main__":
        parts = parts[:-1]
    return ".".join(parts)


def _read_server(root: Path, facts: AppFacts, files: list[Path]) -> None:
    candidates: list[tuple[int, Path, str]] = []
    for path in files:
        if path.suffix != ".py" or "test" in path.name:
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        score = 0
        if re.search(r"__name__\s*==\s*['\"]__main__['\"]", text) or path.name == "__main__.py":
            score += 2
        if re.search(r"\b(HTTPServer|uvicorn|FastAPI|Flask|gradio|serve_forever|\.launch\()", text):
            score += 3
        if path.stem in ("server", "serve", "main", "app", "api"):
            score += 1
        if score >= 4:
            candidates.append((score, path, text))
    if not candidates:
        return
    candidates.sort(key=lambda c: (-c[0], len(c[1].parts), str(c[1])))
    _, path, text = candidates[0]
    module = _module_of(root, path)
    has_main = bool(re.search(r"__name__\s*==\s*['\"]__main__['\"]", text)) or path.name == "__main__.py"
    asgi = re.search(r"^(\w+)\s*=\s*FastAPI\(", text, re.MULTILINE)
    if has_main:
        facts.module = module
    elif asgi:
        facts.asgi = f"{module}:{asgi.group(1)}"
    else:
        return
    facts.port_flag = bool(re.search(r"['\"]--port['\"]", text))
    port = re.search(r"(?:--port['\"][^)\n]*?default\s*=\s*|\bport\s*[=:]\s*|PORT['\"]\s*,\s*['\"]?)(\d{2,5})\b", text)
    if port and 1 <= int(port.group(1)) <= 65535:
        facts.port = int(port.group(1))
    else:
        lowered = text.lower()
        facts.port = next((p for lib, p in SERVER_DEFAULT_PORTS if lib in lowered), 8000)
    route = re.search(r"['\"](/(?:ready|readyz|health|healthz|livez|ping))['\"]", text)
    if route is None:
        for other in files:
            if other.suffix == ".py" and other.parent == path.parent:
                route = re.search(
                    r"['\"](/(?:ready|readyz|health|healthz))['\"]", other.read_text(encoding="utf-8", errors="replace")
                )
                if route:
                    break
    facts.health = route.group(1) if route else None
    what = f"python -m {facts.module}" if facts.module else f"uvicorn {facts.asgi}"
    facts.found.append(
        f"server: {path.relative_to(root).as_posix()} ({what}, port {facts.port}"
        + (f", health {facts.health})" if facts.health else ")")
    )


def _read_models(root: Path, facts: AppFacts, files: list[Path], digest: Callable[[Path], str]) -> None:
    for path in files:
        if path.suffix.lower() not in MODEL_SUFFIXES:
            continue
        rel = path.relative_to(root).as_posix()
        under = rel.split("/", 1)[1] if rel.startswith(("models/", "weights/", "checkpoints/")) else rel
        sha = digest(path)
        facts.models.append((rel, f"/opt/models/{under}", sha))
        facts.found.append(f"model: {rel} ({path.stat().st_size} bytes, sha256 {sha[:12]}…)")


def inspect_app(root: Path, digest: Callable[[Path], str]) -> AppFacts:
    """Everything init can tell about an app folder; digest(path) gives a file's sha256."""
    facts = AppFacts(name=spec_name(root))
    files = list(_walk(root))
    version_file = root / ".python-version"
    if version_file.is_file():
        key = compat.python_key(version_file.read_text(encoding="utf-8").strip().split()[0] or "")
        facts.python_wanted = key
    _read_requirements(root, facts)
    _read_code(root, facts, files)
    _read_server(root, facts, files)
    _read_models(root, facts, files, digest)
    return facts


def choose_pins(facts: AppFacts, *, cpu: bool) -> Pins:
    """Versions for the spec that the matrix accepts; raises ValueError naming what does not fit."""
    notes: list[str] = []
    build = facts.torch_build or ""
    if not cpu and build == "cpu":
        cpu = True
        notes.append(f"{facts.torch_source} pins the CPU build of torch: a CPU base was chosen")
    if cpu:
        if build.startswith("cu"):
            notes.append(f"{facts.torch_source} pins torch +{build}; the CPU image installs the +cpu build instead")
        if facts.cuda_from_lock:
            notes.append(f"{facts.requirements or 'the lock'} pins NVIDIA CUDA wheels, which a CPU image does not need")
        python = CPU_PYTHON
        if facts.python_wanted and facts.python_wanted != python:
            notes.append(f"the app asks for Python {facts.python_wanted}; the Debian bookworm base has {python}")
        pins = Pins(True, "none", None, None, python, facts.torch, tuple(notes))
    else:
        cuda = None
        why = ""
        if build.startswith("cu"):
            cuda, why = compat.cuda_key(build), f"torch +{build} in {facts.torch_source}"
        if cuda is None and facts.cuda_from_lock:
            cuda, why = facts.cuda_from_lock, f"the nvidia-cuda-runtime pin in {facts.torch_source or 'the lock'}"
        if cuda is None and facts.torch:
            builds = compat.torch_cuda_builds(facts.torch)
            cuda = builds[-1] if builds else None
            if cuda:
                why = f"torch {facts.torch}'s newest CUDA build in the matrix"
                notes.append(f"the lock does not say torch's CUDA build; chose CUDA {cuda}, its newest in the matrix")
        cuda = cuda or DEFAULT_CUDA
        ckey = compat.cuda_key(cuda)
        majors = compat.matrix().cudnn.get(ckey, ()) if ckey else ()
        cudnn = facts.cudnn_from_lock if facts.cudnn_from_lock in majors else (majors[-1] if majors else None)
        branch = compat.min_driver_branch(cuda)
        python = GPU_PYTHON
        if facts.python_wanted:
            python = facts.python_wanted
        if facts.torch:
            fits = compat.torch_pythons(facts.torch)
            if fits and python not in fits:
                chosen = GPU_PYTHON if GPU_PYTHON in fits else fits[-1]
                notes.append(f"torch {facts.torch} has no Python {python} wheels; chose Python {chosen}")
                python = chosen
        driver = str(branch) if branch else None
        pins = Pins(
            False, cuda, cudnn, driver, python, facts.torch, tuple(notes), why or "the default; no torch pin says"
        )
    errors = [
        f
        for f in check_versions(
            cuda=pins.cuda, cudnn=pins.cudnn, driver=pins.driver, python=pins.python, torch=pins.torch
        )
        if f.severity == "error"
    ]
    if errors:
        first = errors[0]
        raise ValueError(f"{first.message}" + (f" ({first.hint})" if first.hint else ""))
    return pins


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value, ensure_ascii=False)


# a GPU spec's commented `from.ami`, for when the image is to be an AMI too
_AMI_HINT = (
    "      # for AMIs (targets: [docker, ami]) also:",
    '      # ami: {name: "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*", owners: ["099720109477"]}',
)


def render_spec(facts: AppFacts, pins: Pins) -> str:
    """The commented imagekit.yaml for what was found."""
    name = facts.name
    out: list[str] = [
        f"# imagekit.yaml for {name}, written by `imagekit init`: three layers (base, runtime, app), one image.",
        "# Check it with `imagekit validate`, see the build plan with `imagekit plan`, then",
        "#   imagekit build --target docker",
        "# Every key: `imagekit schema` (a JSON Schema for editors) and the README's spec section.",
        *(f"# note: {n}" for n in pins.notes),
        "version: 1",
        f"name: {name}",
        "layers:",
        "  base:",
    ]
    if pins.cpu:
        out += [
            "    # a Debian bookworm base made with debootstrap: no registry needed (as root, once, about a minute)",
            "    from:",
            "      bootstrap: {distro: debian, suite: bookworm}",
            '    cuda: "none"',
        ]
    elif facts.cuda_from_lock and pins.torch:
        # the lock pins torch and NVIDIA's CUDA wheels (nvidia-cuda-runtime[-cu12], cuDNN, cuBLAS, ...): the container
        # needs no CUDA image, only the host's driver, as the GPU example does
        out += [
            "    # a Debian bookworm base made with debootstrap: no registry needed (as root, once, about a minute);",
            "    # CUDA's user space comes from the NVIDIA wheels the lock pins (nvidia-*), the driver from the host",
            "    from:",
            "      bootstrap: {distro: debian, suite: bookworm}",
            *_AMI_HINT,
            f"    cuda: {_q(pins.cuda)}   # from {pins.cuda_why}",
        ]
    else:
        tag = CUDA_IMAGE_PATCH.get(pins.cuda, f"{pins.cuda}.0")
        flavour = "cudnn" if pins.cudnn and int(pins.cudnn) >= 9 else (f"cudnn{pins.cudnn}" if pins.cudnn else "")
        image = f"nvidia/cuda:{tag}-{flavour + '-' if flavour else ''}runtime-ubuntu22.04"
        out += [
            "    from:",
            f"      docker: {image}   # check the tag at hub.docker.com/r/nvidia/cuda",
            *_AMI_HINT,
            f"    cuda: {_q(pins.cuda)}   # from {pins.cuda_why}",
        ]
    if not pins.cpu and pins.cudnn:
        out.append(f"    cudnn: {_q(pins.cudnn)}")
    if not pins.cpu and pins.driver:
        out.append(f"    driver: {_q(pins.driver)}   # AMI only: the oldest NVIDIA driver branch for CUDA {pins.cuda}")
    out += ["    # apt: [ffmpeg, libsndfile1]   # system packages the app needs", "  runtime:", "    parent: base"]
    out.append(f"    python: {_q(pins.python)}")
    if pins.torch:
        out.append(
            f"    torch: {_q(pins.torch)}   # from {facts.torch_source}; the matrix checked it with cuda and python"
        )
    if facts.requirements:
        out += [
            "    # installed with --no-deps: the file must pin every package (name==version), as a lock does",
            f"    requirements: {facts.requirements}",
        ]
    if facts.lock_note:
        out.append(f"    # {facts.lock_note}")
    if facts.pip:
        out.append("    # not a complete lock: these install with their dependencies; a lock makes builds repeatable")
        out.append("    pip:")
        out += [f"      - {_q(line)}" for line in facts.pip]
    out += ["  app:", "    parent: runtime"]
    if facts.code:
        out.append("    copy:")
        out += [f"      - {{src: {_q(src)}, dest: {_q(dest)}}}" for src, dest in facts.code]
    else:
        out.append("    # copy: [{src: app/, dest: /opt/app/app}]   # no code found: add what the image runs")
    if facts.models:
        out.append("    models:   # pinned by sha256: a changed file fails validate until the pin is updated")
        out += [f"      - {{src: {_q(s)}, dest: {_q(d)}, sha256: {_q(h)}}}" for s, d, h in facts.models]
    env = {"PYTHONPATH": "/opt/app"} if facts.code else {}
    if len(facts.models) == 1:
        env = {"MODEL_PATH": facts.models[0][1], **env}
    if env:
        out.append("    env: {" + ", ".join(f"{k}: {_q(v)}" for k, v in env.items()) + "}")
    out += ["    user: app", "    workdir: /opt/app"]
    command = _command(facts)
    if command:
        out.append(f"    command: [{', '.join(_q(a) for a in command)}]")
        out.append(f"    port: {facts.port}")
    else:
        out.append('    # command: ["python", "-m", "app.server", "--port", "8000"]   # no server found')
        out.append("    # port: 8000")
    out += [
        "images:",
        f"  {name}:",
        "    leaf: app",
        "    targets: [docker]   # add ami for layered AMIs (needs from.ami on the base, or --rehearse)",
        "verify:",
        f"  gpu: {'optional' if pins.cpu else 'required'}",
    ]
    if command and facts.health:
        out.append(f"  health: {{path: {facts.health}, timeout: 600}}")
    elif command:
        out.append("  # health: {path: /ready, timeout: 600}   # no health route found in the server")
    out += [
        "  # an inference request whose answer is checked after every build:",
        "  # smoke: {method: POST, path: /predict, json: {input: example}, expect: {status: 200, min_bytes: 1}}",
        "",
    ]
    return "\n".join(out)


def _command(facts: AppFacts) -> list[str] | None:
    if facts.port is None:
        return None
    if facts.module:
        return ["python", "-m", facts.module, *(["--port", str(facts.port)] if facts.port_flag else [])]
    if facts.asgi:
        return ["python", "-m", "uvicorn", facts.asgi, "--host", "0.0.0.0", "--port", str(facts.port)]  # noqa: S104
    return None
