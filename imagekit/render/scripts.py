"""One POSIX sh provisioning script per layer, the same text for both targets. Pure: spec in, text out.

A script is a set of phases (system, cuda, build-deps, venv, install, drop-build-deps, files, run). With no
arguments it runs every phase the layer has, which is what Packer's shell provisioner does on a VM; the Dockerfile
runs chosen phases per RUN step (`sh <layer>.sh system`, then `sh <layer>.sh build-deps venv install drop-build-deps`
with the package cache mounted) because there COPY places files and weights between them. The one step
that differs by target is CUDA: a container gets it from its base image, a VM installs the NVIDIA driver branch,
the CUDA runtime and cuDNN from NVIDIA's apt repository. The target is read at run time from $IMAGEKIT_TARGET,
so one file serves both and the committed render stays a single `provision/<layer>.sh`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from imagekit.errors import UsageError
from imagekit.names import SRC_DIR, VENV
from imagekit.render.install import (
    INSTALL_HELPERS,
    install_body,
    install_build_deps,
    lock_part_helper,
    lock_parts_body,
)
from imagekit.render.upgrade import APT_UPGRADE
from imagekit.spec import Layer, LoadedSpec, Resolved

PHASES = ("system", "cuda", "build-deps", "venv", "install", "drop-build-deps", "files", "run")
# run only when asked for (the Dockerfile's <layer>-lock stage), never by a script run without arguments
EXTRA_PHASES = ("lock-parts",)
NVIDIA_REPO = "https://developer.download.nvidia.com/compute/cuda/repos"
TORCH_INDEX = "https://download.pytorch.org/whl"


@dataclass(frozen=True)
class LayerSteps:
    """What a layer's script does, decided from the chain up to that layer (so it is the same for every image)."""

    name: str
    layer: Layer
    python: str  # the interpreter command, e.g. python3.11
    python_pkgs: tuple[str, ...]  # interpreter packages this layer installs
    cuda: str | None  # the resolved CUDA version when this layer owns the CUDA step
    cudnn: str | None
    driver: str | None
    pip_work: bool  # torch, a requirements lock or pip packages
    wheel_cuda: bool = False  # the container's base is bootstrapped: CUDA user space comes from torch's nvidia-* wheels

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases this layer's script has, in run order."""
        layer = self.layer
        has = {
            # a root layer always upgrades the distribution's packages (the security fixes a refresh is for)
            "system": bool(layer.parent is None or layer.apt or self.python_pkgs or layer.user),
            "cuda": self.cuda is not None,
            "build-deps": self.pip_work,
            "venv": self.pip_work or bool(self.python_pkgs),
            "install": self.pip_work,
            "drop-build-deps": self.pip_work,
            "files": bool(layer.copy_ or layer.models or layer.workdir),
            "run": bool(layer.run),
        }
        return tuple(p for p in PHASES if has[p])


def layer_steps(loaded: LoadedSpec, layer_name: str) -> LayerSteps:
    """The steps of one layer, from its own keys and what its ancestors resolve to."""
    layer = loaded.spec.layers[layer_name]
    upto = loaded.resolved_upto(layer_name)
    python_in_chain = upto.python
    parent = layer.parent
    ancestor_pip = (
        bool(loaded.fold_upto("pip", parent, lambda prev, lay: bool(prev) or _pip_work(lay))) if parent else False
    )
    ancestor_python = loaded.resolved_upto(parent).python if parent else None
    pip_work = _pip_work(layer)
    pkgs: tuple[str, ...] = ()
    if layer.python is not None and layer.python != ancestor_python:
        pkgs = (f"python{layer.python}", f"python{layer.python}-venv")
    elif pip_work and python_in_chain is None and not ancestor_pip:
        pkgs = ("python3", "python3-venv")
    owns_cuda = (layer.cuda is not None or layer.cudnn is not None or layer.driver is not None) and upto.cuda != "none"
    return LayerSteps(
        name=layer_name,
        layer=layer,
        python=f"python{python_in_chain}" if python_in_chain else "python3",
        python_pkgs=pkgs,
        cuda=upto.cuda if owns_cuda else None,
        cudnn=upto.cudnn if owns_cuda else None,
        driver=upto.driver if owns_cuda else None,
        pip_work=pip_work,
        wheel_cuda=_bootstrapped(loaded.spec.layers[_root_of(loaded, layer_name)]),
    )


def _root_of(loaded: LoadedSpec, layer_name: str) -> str:
    name = layer_name
    while (parent := loaded.spec.layers[name].parent) is not None:
        name = parent
    return name


def _bootstrapped(root: Layer) -> bool:
    # a bootstrap base wins over from.docker for the container (render/dockerfile.py), as here
    src = root.from_
    return src is not None and src.bootstrap is not None


def _pip_work(layer: Layer) -> bool:
    return bool(layer.torch or layer.requirements or layer.pip)


def _q(text: str) -> str:
    return shlex.quote(text)


def torch_index(cuda: str) -> str:
    """PyTorch's wheel index for a CUDA version (`12.4` -> .../cu124), or the CPU one for `none`."""
    if cuda == "none":
        return f"{TORCH_INDEX}/cpu"
    major, _, minor = cuda.partition(".")
    return f"{TORCH_INDEX}/cu{major}{(minor or '0').split('.')[0]}"


def cudnn_package(cudnn: str, cuda: str) -> str:
    """NVIDIA's apt package for a cuDNN major on a CUDA major (cuDNN 9 is split per CUDA major, 8 is not)."""
    major = cudnn.split(".", maxsplit=1)[0]
    if major.isdigit() and int(major) >= 9:
        return f"libcudnn{major}-cuda-{cuda.split('.', maxsplit=1)[0]}"
    return f"libcudnn{major}"


_HEADER = """\
#!/bin/sh
# imagekit provisioning script for layer {layer} of spec {spec}. Generated by `imagekit render`: do not edit.
# Both targets run this same file. With no arguments it runs every phase ({phases});
# the Dockerfile runs chosen phases per RUN step. IMAGEKIT_TARGET (docker|ami) picks the CUDA step and
# IMAGEKIT_SRC is where the spec's files are (default {src}).
set -eu

IMAGEKIT_LAYER={layer_q}
: "${{IMAGEKIT_TARGET:?set IMAGEKIT_TARGET to docker or ami}}"
: "${{IMAGEKIT_SRC:={src}}}"
{venv_lines}DEBIAN_FRONTEND=noninteractive
export DEBIAN_FRONTEND

log() {{ printf 'imagekit[%s]: %s\\n' "$IMAGEKIT_LAYER" "$*" >&2; }}
die() {{ log "error: $*"; exit 1; }}

case "$IMAGEKIT_TARGET" in docker | ami) ;; *) die "IMAGEKIT_TARGET must be docker or ami, not $IMAGEKIT_TARGET" ;; esac
if [ "$(id -u)" != 0 ]; then die "run as root (the Dockerfile's RUN and Packer's execute_command do)"; fi

APT_UPDATED=
apt_install() {{
    if [ -z "$APT_UPDATED" ]; then
        apt-get update -q
        APT_UPDATED=1
    fi
    apt-get install -y -q --no-install-recommends "$@"
}}

apt_clean() {{
    apt-get clean
    rm -rf /var/lib/apt/lists/*
    APT_UPDATED=
}}

# pip's CA comes from the BuildKit secret `ca` (or $PIP_CERT), its settings from the secret `pipconf`; a
# wheelhouse comes in through $PIP_FIND_LINKS. Nothing of these is written into the machine.
pip_env() {{
    if [ -z "${{PIP_CERT:-}}" ] && [ -s /run/secrets/ca ]; then
        PIP_CERT=/run/secrets/ca
        export PIP_CERT
    fi
    if [ -z "${{PIP_CONFIG_FILE:-}}" ] && [ -s /run/secrets/pipconf ]; then
        PIP_CONFIG_FILE=/run/secrets/pipconf
        export PIP_CONFIG_FILE
    fi
    if [ -n "${{IMAGEKIT_CACHE:-}}" ]; then
        PIP_CACHE_DIR="$IMAGEKIT_CACHE/pip"
        export PIP_CACHE_DIR
    else
        PIP_NO_CACHE_DIR=1
        export PIP_NO_CACHE_DIR
    fi
    PIP_DISABLE_PIP_VERSION_CHECK=1
    PIP_NO_INPUT=1
    PIP_PROGRESS_BAR=off
    export PIP_DISABLE_PIP_VERSION_CHECK PIP_NO_INPUT PIP_PROGRESS_BAR
}}
"""


def _venv_lines(phases: tuple[str, ...], python: str) -> str:
    lines = ""
    if {"venv", "install", "run"} & set(phases):
        lines += f"VENV={VENV}\n"
    if "venv" in phases:
        lines += f"PYTHON={python}\n"
    return lines


def _fn(name: str, body: list[str]) -> list[str]:
    return [f"phase_{name.replace('-', '_')}() {{", *[f"    {line}" if line else "" for line in body], "}", ""]


def _system(steps: LayerSteps) -> list[str]:
    layer = steps.layer
    body: list[str] = []
    pkgs = sorted({*layer.apt, *steps.python_pkgs})
    if layer.parent is None:
        # the base's own apt sources (the mirror it came from, or the AMI's); kept config files, no prompts. The
        # Dockerfile upgrades in a step of its own (UPGRADE_RUN), which builds of the same base share.
        body += [
            'if [ "$IMAGEKIT_TARGET" = ami ]; then',
            "    log 'upgrade: the distribution packages (apt-get upgrade)'",
            "    apt-get update -q",
            "    APT_UPDATED=1",
            f"    {APT_UPGRADE}",
            *(["    apt_clean"] if not pkgs else []),
            "fi",
        ]
    if pkgs:
        body += [f"log {_q('apt: ' + ' '.join(pkgs))}", "apt_install " + " ".join(_q(p) for p in pkgs), "apt_clean"]
    if layer.user:
        user = _q(layer.user)
        body += [
            f"if ! id -u {user} >/dev/null 2>&1; then",
            f"    log {_q('user: ' + layer.user)}",
            f"    useradd --system --user-group --create-home --home-dir /home/{user} --shell /usr/sbin/nologin {user}",
            "fi",
        ]
    return body


def _cuda(steps: LayerSteps) -> list[str]:
    assert steps.cuda is not None
    cuda = steps.cuda
    pkgs: list[str] = []
    if steps.driver:
        pkgs.append(f"cuda-drivers-{steps.driver}")
    pkgs.append("cuda-libraries-" + "-".join(cuda.split(".")[:2]))
    if steps.cudnn:
        pkgs.append(cudnn_package(steps.cudnn, cuda))
    source = (
        f"CUDA {cuda} user space from the nvidia-* wheels torch depends on (the lock pins them)"
        if steps.wheel_cuda
        else f"CUDA {cuda} from its base image"
    )
    return [
        'if [ "$IMAGEKIT_TARGET" = docker ]; then',
        f"    log {_q(f'cuda: a container takes {source}; nothing to install')}",
        "    return 0",
        "fi",
        "# shellcheck disable=SC1091",
        ". /etc/os-release",
        'case "$ID" in',
        '    ubuntu) repo="ubuntu$(echo "$VERSION_ID" | tr -d .)" ;;',
        '    debian) repo="debian$VERSION_ID" ;;',
        '    *) die "the CUDA step knows Ubuntu and Debian, not $ID" ;;',
        "esac",
        'case "$(uname -m)" in',
        "    x86_64) arch=x86_64 ;;",
        "    aarch64) arch=sbsa ;;",
        '    *) die "no CUDA repository for $(uname -m)" ;;',
        "esac",
        "if ! dpkg -s cuda-keyring >/dev/null 2>&1; then",
        "    log 'cuda: adding NVIDIA apt repository (cuda-keyring)'",
        "    apt_install ca-certificates curl",
        f'    curl -fsSL -o /tmp/cuda-keyring.deb "{NVIDIA_REPO}/$repo/$arch/cuda-keyring_1.1-1_all.deb"',
        "    dpkg -i /tmp/cuda-keyring.deb",
        "    rm -f /tmp/cuda-keyring.deb",
        "    APT_UPDATED=",
        "fi",
        f"log {_q('cuda: ' + ' '.join(pkgs))}",
        # DKMS builds the kernel module for the running kernel: its headers must be there.
        'apt_install "linux-headers-$(uname -r)" ' + " ".join(_q(p) for p in pkgs),
        "apt_clean",
    ]


def _build_deps() -> list[str]:
    return [
        "# compilers (and the interpreter's headers) come in only when a package has no wheel for this platform:",
        "# the install phase calls install_build_deps then; a lock of wheels builds with none of them",
        "log 'build-deps: only if a package must be built from source'",
    ]


def _venv() -> list[str]:
    return [
        'if [ ! -x "$VENV/bin/python" ]; then',
        '    log "venv: $VENV ($PYTHON)"',
        '    "$PYTHON" -m venv "$VENV"',
        "fi",
    ]


def _drop_build_deps(steps: LayerSteps) -> list[str]:
    record = f"/var/lib/imagekit/build-deps.{steps.name}"
    return [
        f"if [ -s {_q(record)} ]; then",
        f"    log \"drop-build-deps: $(tr '\\n' ' ' <{_q(record)})\"",
        "    # shellcheck disable=SC2046",
        f"    apt-get purge -y -q --auto-remove $(cat {_q(record)})",
        "fi",
        f"rm -f {_q(record)}",
    ]


_FILES_HELPERS = """\
# Files and weights are root-owned and not writable by the app user: files 0644 (weights 0444), folders 0755.
install_tree() {
    install -d -o root -g root -m 0755 "$2"
    cp -R "$1/." "$2/"
    find "$2" -name __pycache__ -prune -exec rm -rf {} +
    chown -R root:root "$2"
    chmod -R u+rwX,go+rX,go-w "$2"
}

install_path() {
    # as Docker's COPY does: a folder's contents go into dest; a file goes to dest, or into it when dest ends in /
    if [ -d "$1" ]; then
        install_tree "$1" "$2"
    else
        case "$2" in */) dest="$2$(basename "$1")" ;; *) dest="$2" ;; esac
        install -d -o root -g root -m 0755 "$(dirname "$dest")"
        install -o root -g root -m 0644 "$1" "$dest"
    fi
}

fetch() {
    case "$1" in
        s3://*) aws s3 cp --only-show-errors "$1" "$2" ;;
        *)
            if command -v curl >/dev/null 2>&1; then
                curl -fsSL -o "$2" "$1"
            else
                wget -q -O "$2" "$1"
            fi
            ;;
    esac
}

install_model() {
    src="$1"
    case "$src" in
        https://* | s3://*)
            tmp="$(mktemp)"
            fetch "$src" "$tmp"
            src="$tmp"
            ;;
        *) tmp="" ;;
    esac
    [ -f "$src" ] || die "model $1 is missing"
    found="$(sha256sum "$src" | cut -d' ' -f1)"
    [ "$found" = "$3" ] || die "model $1 has sha256 $found, the spec pins $3"
    install -d -o root -g root -m 0755 "$(dirname "$2")"
    install -o root -g root -m 0444 "$src" "$2"
    if [ -n "$tmp" ]; then rm -f "$tmp"; fi
}
"""


def model_owner(loaded: LoadedSpec, layer_name: str) -> str:
    """Who owns weights with a `mode`: the user the chain up to this layer runs as (root when none)."""
    return loaded.resolved_upto(layer_name).user or "root"


def _torch_index(steps: LayerSteps, cuda: str) -> str:
    # CUDA from the wheels, and PyPI's torch is already this CUDA build: no second index to ask
    torch = steps.layer.torch
    if torch and steps.wheel_cuda and _pypi_is(torch, cuda):
        return ""
    return torch_index(cuda)


def _pypi_is(torch: str, cuda: str) -> bool:
    from imagekit.compat import cuda_key, pypi_build

    build = pypi_build(torch)
    return build is not None and cuda != "none" and build.cuda == cuda_key(cuda)


def _files(layer: Layer, owner: str = "root") -> list[str]:
    body: list[str] = []
    if layer.workdir:
        body.append(f"install -d -m 0755 {_q(layer.workdir)}")
    # weights before code, as in the Dockerfile
    for model in layer.models:
        src = _q(model.src) if model.is_remote else f'"$IMAGEKIT_SRC"/{_q(model.src)}'
        body += [
            f"log {_q(f'model: {model.src} -> {model.dest}')}",
            f"install_model {src} {_q(model.dest)} {model.sha256}",
        ]
        if model.mode:
            # readable by the service user, writable by nobody else (the spec's mode)
            body += [f"chown {_q(owner)}:{_q(owner)} {_q(model.dest)}", f"chmod {model.mode} {_q(model.dest)}"]
    for item in layer.copy_:
        body += [
            f"log {_q(f'copy: {item.src} -> {item.dest}')}",
            f'install_path "$IMAGEKIT_SRC"/{_q(item.src)} {_q(item.dest)}',
        ]
    return body


def _run(layer: Layer, upto: Resolved) -> list[str]:
    body = [
        "# the layer's own commands see what a RUN step in the image sees: the env so far, the virtualenv, WORKDIR",
        'if [ -x "$VENV/bin/python" ]; then PATH="$VENV/bin:$PATH"; export PATH; fi',
    ]
    if upto.workdir:
        body.append(f"cd {_q(upto.workdir)}")
    for key, value in sorted(upto.env.items()):
        if _q(value) != value:
            body.append("# shellcheck disable=SC2016 # the value is meant literally, as in the image")
        body.append(f"export {key}={_q(value)}")
    for cmd in layer.run:
        body += [f"log {_q('run: ' + cmd)}", f"sh -c {_q(cmd)}"]
    return body


def render_layer_script(loaded: LoadedSpec, layer_name: str) -> str:
    """The provisioning script of one layer."""
    steps = layer_steps(loaded, layer_name)
    upto = loaded.resolved_upto(layer_name)
    phases = steps.phases
    lines = [
        _HEADER.format(
            layer=layer_name,
            layer_q=_q(layer_name),
            spec=loaded.spec.name,
            phases=" ".join(phases) or "none",
            src=SRC_DIR,
            venv_lines=_venv_lines(phases, steps.python),
        )
    ]
    if "install" in phases:
        lines.append(INSTALL_HELPERS)
        lines += install_build_deps(steps.name, steps.python)
    if steps.layer.requirements and "install" in phases:
        lines.append(lock_part_helper(steps.layer))
    if "files" in phases and (steps.layer.copy_ or steps.layer.models):
        lines.append(_FILES_HELPERS)
    bodies: dict[str, list[str]] = {
        "system": _system(steps) if "system" in phases else [],
        "cuda": _cuda(steps) if "cuda" in phases else [],
        "build-deps": _build_deps() if "build-deps" in phases else [],
        "venv": _venv(),
        "install": install_body(steps.layer, _torch_index(steps, upto.cuda)) if "install" in phases else [],
        "drop-build-deps": _drop_build_deps(steps) if "drop-build-deps" in phases else [],
        "files": _files(steps.layer, upto.user or "root"),
        "run": _run(steps.layer, upto),
    }
    extra = ("lock-parts",) if steps.layer.requirements and "install" in phases else ()
    bodies["lock-parts"] = lock_parts_body(steps.layer) if extra else []
    for phase in (*phases, *extra):
        lines += _fn(phase, bodies[phase])
    lines += [
        f"if [ $# -eq 0 ]; then set -- {' '.join(phases)}; fi" if phases else "if [ $# -eq 0 ]; then exit 0; fi",
        'for phase in "$@"; do',
        '    case "$phase" in',
    ]
    for phase in (*phases, *extra):
        lines.append(f'        {phase}) log "phase {phase}"; phase_{phase.replace("-", "_")} ;;')
    # A phase the layer does not have is a no-op, so the Dockerfile may ask for one uniformly.
    known = " | ".join(p for p in (*PHASES, *EXTRA_PHASES) if p not in (*phases, *extra))
    if known:
        lines.append(f"        {known}) ;;")
    lines += [
        '        *) die "unknown phase $phase (phases: ' + " ".join((*PHASES, *EXTRA_PHASES)) + ')" ;;',
        "    esac",
        "done",
        'log "done"',
        "",
    ]
    return "\n".join(lines)


def render_scripts(loaded: LoadedSpec, image: str, target: str) -> dict[str, str]:
    """Layer name -> provisioning script for every layer of an image's chain, root first.

    The text does not depend on the target or the image (a layer's script follows from the chain up to it), so a
    layer shared by images or targets has one script; the target is chosen at run time by $IMAGEKIT_TARGET.
    """
    if target not in ("docker", "ami"):
        raise UsageError(f"target must be docker or ami, not {target!r}")
    if image not in loaded.spec.images:
        raise UsageError(f"unknown image {image!r} (images: {', '.join(loaded.spec.images)})")
    return {name: render_layer_script(loaded, name) for name, _ in loaded.chain(image)}
