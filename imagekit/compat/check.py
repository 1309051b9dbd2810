"""Checking a spec's pins against the compatibility matrix: findings with the row's source, and spec problems."""

from __future__ import annotations

from imagekit.compat import (
    REGENERATE,
    TORCH_RE,
    Finding,
    cuda_key,
    cuda_of_wheels,
    cuda_versions,
    cudnn_of_wheels,
    curated_releases,
    driver_branch,
    matrix,
    newer_than_matrix,
    pypi_build,
    python_key,
    torch_cuda_builds,
    torch_for_cuda,
    torch_pythons,
    torch_range,
    torch_releases,
    version_lines,
    vkey,
    wheel_pins,
)
from imagekit.errors import Problem
from imagekit.spec import Layer, LoadedSpec

# --- checking a set of pins -------------------------------------------------------------------------------------


def check_versions(
    *,
    cuda: str = "none",
    cudnn: str | None = None,
    driver: str | None = None,
    python: str | None = None,
    torch: str | None = None,
    wheels: bool = False,
) -> list[Finding]:
    """Check resolved pins against the matrix; pure, no file positions (check_spec adds those).

    `wheels`: the base has no CUDA of its own (a bootstrapped one), so CUDA user space is what torch's wheels bring.
    """
    found: list[Finding] = []
    cpu = cuda.strip().lower() == "none"
    ckey = None if cpu else cuda_key(cuda)
    known_cuda = ", ".join(cuda_versions())
    if not cpu:
        if ckey is None:
            found.append(
                Finding("cuda", f"{cuda!r} is not a CUDA version", 'write MAJOR.MINOR such as "12.4", or "none"')
            )
        elif ckey not in matrix().cuda:
            found.append(Finding("cuda", f"unknown CUDA version {cuda}", f'known: {known_cuda}, or "none" for CPU'))
            ckey = None
    found += _check_torch(cuda, cpu, ckey, python, torch, wheels=wheels)
    if driver is not None:
        found += _check_driver(driver, ckey)
    if cudnn is not None:
        found += _check_cudnn(cudnn, cpu, ckey)
    if wheels and ckey is not None:
        found += _check_wheel_cuda(ckey, cudnn, torch)
    return found


def _check_wheel_cuda(ckey: str, cudnn: str | None, torch: str | None) -> list[Finding]:
    """CUDA from torch's wheels: PyPI's build carries one CUDA (and cuDNN); others come from PyTorch's own index."""
    if torch is None:
        pypi_for = [r.version for r in matrix().torch if r.pypi is not None and r.pypi.cuda == ckey]
        hint = f"torch releases whose PyPI wheels carry CUDA {ckey}: {version_lines(pypi_for)}" if pypi_for else ""
        return [
            Finding(
                "cuda",
                f"CUDA {ckey} on a bootstrapped base comes from torch's nvidia-* wheels, but no layer pins torch",
                hint or "set torch, or start from a CUDA image (from.docker)",
            )
        ]
    build = pypi_build(torch)
    if build is None:
        return [Finding("torch", f"the CUDA build of torch {torch} on PyPI is not in the matrix", "", "note")]
    if build.cuda != ckey:
        index = f"https://download.pytorch.org/whl/cu{ckey.replace('.', '')}"
        return [
            Finding(
                "cuda",
                f"torch {torch} on PyPI is the CUDA {build.cuda} build; CUDA {ckey} comes from PyTorch's index {index}",
                f'the build must reach that index, or set cuda: "{build.cuda}" (source: {build.source})',
                "note",
            )
        ]
    major = (cudnn or "").strip().split(".")[0]
    if major.isdigit() and str(int(major)) != build.cudnn:
        return [
            Finding(
                "cudnn",
                f"torch {torch}'s CUDA {ckey} wheels bring cuDNN {build.cudnn} (nvidia-cudnn), not cuDNN {int(major)}",
                f'set cudnn: "{build.cudnn}" (source: {build.source})',
            )
        ]
    return []


def _stale(torch: str) -> Finding:
    """A release newer than the matrix: say so, with the newest known release and the command that regenerates it."""
    made = matrix().generated
    when = f", generated {made['date']} from {made['index']}" if made.get("date") else ""
    return Finding(
        "torch",
        f"torch {torch} is newer than the compatibility matrix (newest known: torch {torch_range()[1]}{when})",
        f"regenerate the matrix from the package index: `{REGENERATE}` (review and commit the diff), "
        f"or pin torch {torch_range()[1]} or older",
    )


def _check_torch(
    cuda: str, cpu: bool, ckey: str | None, python: str | None, torch: str | None, *, wheels: bool = False
) -> list[Finding]:
    found: list[Finding] = []
    pkey = python_key(python) if python is not None else None
    if python is not None and pkey is None:
        found.append(Finding("python", f"{python!r} is not a Python version", 'write MAJOR.MINOR such as "3.11"'))
    if torch is None:
        return found
    m = TORCH_RE.fullmatch(torch.strip())
    if m is None:
        return [*found, Finding("torch", f"{torch!r} is not a torch version", 'write a release such as "2.5.1"')]
    first, last = torch_range()
    releases = torch_releases(torch)
    if not releases:
        if newer_than_matrix(torch):
            return [*found, _stale(torch)]
        observed = [r.version for r in matrix().torch if r.confidence == "observed"]
        known = f"the matrix knows torch {first} to {last}" + (
            f" (and {', '.join(observed)} CPU, observed)" if observed else ""
        )
        what = f"unknown torch version {torch}" if cpu else f"unknown torch version {torch} for CUDA {cuda}"
        return [*found, Finding("torch", what, known)]
    complete = all(r.complete for r in releases)
    local = (m["local"] or "").lower()
    if cpu:
        if local.startswith("cu"):
            found.append(Finding("torch", f'torch {torch} is a CUDA build but cuda is "none"', "drop the +cu suffix"))
        elif not any(r.cpu for r in releases):
            found.append(Finding("torch", f"torch {torch} has no CPU build in the matrix"))
    elif ckey is not None:
        builds = torch_cuda_builds(torch)
        if local.startswith("cu") and cuda_key(local) != ckey:
            found.append(
                Finding(
                    "torch",
                    f"torch {torch} is the CUDA {cuda_key(local)} build, not CUDA {ckey}",
                    f"use +cu{ckey.replace('.', '')}",
                )
            )
        elif local == "cpu":
            found.append(Finding("torch", f"torch {torch} is the CPU build, but cuda is {cuda}", 'set cuda: "none"'))
        elif ckey not in builds:
            others = torch_for_cuda(ckey)
            alt = (
                f"torch releases built for CUDA {ckey}: {version_lines(others)}"
                if others
                else f"no torch release in the matrix is built for CUDA {ckey}"
            )
            pypi = pypi_build(torch)
            if not complete and pypi is not None:
                # PyTorch's own index has more CUDA variants than the sourced table lists for this release
                if not wheels:  # (on a bootstrapped base _check_wheel_cuda says the same)
                    index = f"https://download.pytorch.org/whl/cu{ckey.replace('.', '')}"
                    found.append(
                        Finding(
                            "cuda",
                            f"torch {torch} on PyPI is the CUDA {pypi.cuda} build; a CUDA {ckey} build would come "
                            f"from PyTorch's index {index}, whose variants the matrix does not list (not checked)",
                            f'make sure that index serves it, or set cuda: "{pypi.cuda}"',
                            "note",
                        )
                    )
                msg = ""
            elif builds:
                msg = f"torch {torch} is built for CUDA {', '.join(builds)}, not CUDA {ckey}"
            elif complete:
                msg = f"torch {torch} has no CUDA builds in the matrix, not CUDA {ckey}"
            else:
                msg = f"torch {torch} is known only as a CPU build (observed); CUDA {ckey} builds are not in the matrix"
                alt = f"the matrix knows CUDA builds of torch {first} to {last}"
            if msg:
                found.append(Finding("torch", msg, alt))
    if pkey is not None:
        pythons = torch_pythons(torch)
        if pkey not in pythons:
            fits = sorted({r.minor for r in curated_releases() if pkey in r.pythons}, key=vkey)
            hint = (
                f"torch releases for Python {pkey}: {', '.join(fits)}"
                if fits
                else f"no torch release in the matrix has Python {pkey} wheels"
            )
            msg = f"Python {pkey} has no torch {torch} wheels; torch {torch} supports Python {', '.join(pythons)}"
            if all(r.pythons_complete for r in releases):
                found.append(Finding("python", msg, hint))
            else:
                found.append(
                    Finding("python", msg + " (observed so far)", "not checked: the row is incomplete", "note")
                )
    return found


def _check_driver(driver: str, ckey: str | None) -> list[Finding]:
    branch = driver_branch(driver)
    if branch is None:
        return [Finding("driver", f"{driver!r} is not a driver branch", 'write the branch number such as "550"')]
    if ckey is None:
        return []
    row = matrix().cuda[ckey]
    if branch >= row.min_driver_branch:
        return []
    runs = [v for v in cuda_versions() if matrix().cuda[v].min_driver_branch <= branch]
    hint = f"use driver {row.min_driver_branch} or newer"
    if runs:
        hint += f", or a CUDA version driver {branch} runs: {', '.join(runs)}"
    return [
        Finding(
            "driver",
            f"driver branch {branch} is too old for CUDA {ckey}, which needs {row.min_driver_branch} or newer "
            f"(>= {row.min_driver})",
            hint,
        )
    ]


def _check_cudnn(cudnn: str, cpu: bool, ckey: str | None) -> list[Finding]:
    text = cudnn.strip().lower()
    if text == "none":
        return []
    major = text.split(".")[0]
    if not major.isdigit():
        return [Finding("cudnn", f"{cudnn!r} is not a cuDNN version", 'write the major version such as "9"')]
    if cpu:
        return [Finding("cudnn", f'cuDNN {cudnn} is set but cuda is "none"', "remove cudnn from CPU images")]
    if ckey is None:
        return []
    majors = matrix().cudnn.get(ckey, ())
    if str(int(major)) in majors:
        return []
    fits = [v for v in cuda_versions() if str(int(major)) in matrix().cudnn.get(v, ())]
    hint = (
        f"CUDA versions with cuDNN {int(major)}: {', '.join(fits)}" if fits else f"cuDNN {major} is not in the matrix"
    )
    return [
        Finding("cudnn", f"cuDNN {int(major)} is not shipped for CUDA {ckey}; it has cuDNN {', '.join(majors)}", hint)
    ]


# --- checking a loaded spec -------------------------------------------------------------------------------------


def _check_lock_wheels(
    loaded: LoadedSpec, chain: list[tuple[str, Layer]], cuda: str, cudnn: str | None
) -> list[Finding]:
    """A bootstrapped base takes CUDA from the lock's NVIDIA wheels: they must be the spec's CUDA (and cuDNN)."""
    ckey = None if cuda.strip().lower() == "none" else cuda_key(cuda)
    out: list[Finding] = []
    for _name, layer in chain:
        if not layer.requirements:
            continue
        try:
            text = loaded.local(layer.requirements).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # check_files names a missing lock
        pins = wheel_pins(text)
        runtime = cuda_of_wheels(pins)
        if runtime and ckey and runtime[0] != ckey:
            out.append(
                Finding(
                    "cuda",
                    f"{layer.requirements} pins {runtime[1]} (CUDA {runtime[0]}), but the spec says CUDA {ckey}",
                    f'set cuda: "{runtime[0]}", or regenerate the lock for torch\'s CUDA {ckey} build',
                )
            )
        dnn = cudnn_of_wheels(pins)
        want = (cudnn or "").strip().split(".")[0]
        if dnn and want.isdigit() and dnn[0] != str(int(want)):
            out.append(
                Finding(
                    "cudnn",
                    f"{layer.requirements} pins {dnn[1]} (cuDNN {dnn[0]}), but the spec says cuDNN {int(want)}",
                    f'set cudnn: "{dnn[0]}"',
                )
            )
    return out


def _setter(chain: list[tuple[str, Layer]], key: str) -> str | None:
    """The layer whose value for `key` wins in the chain (the last one, root first, that sets it)."""
    name = None
    for layer_name, layer in chain:
        if getattr(layer, key) is not None:
            name = layer_name
    return name


def _located(loaded: LoadedSpec) -> list[tuple[Finding, Problem]]:
    """Every finding of every image, placed at the line of the layer key that set the value (deduplicated)."""
    out: dict[tuple[Finding, Problem], None] = {}
    for image in loaded.spec.images:
        chain = loaded.chain(image)
        r = loaded.resolved(image)
        root = chain[0][1].from_
        wheels = root is not None and root.bootstrap is not None
        pins = {"cudnn": r.cudnn, "driver": r.driver, "python": r.python, "torch": r.torch}
        found = check_versions(cuda=r.cuda, **pins, wheels=wheels)
        if wheels:
            found += _check_lock_wheels(loaded, chain, r.cuda, r.cudnn)
        for f in found:
            layer = _setter(chain, f.key)
            if layer is None:
                line, path = loaded.line_of("images", image, "leaf"), f"images.{image}"
            else:
                line, path = loaded.line_of("layers", layer, f.key), f"layers.{layer}.{f.key}"
            out[(f, Problem(loaded.file, line, path, f.message, f.hint))] = None
    return list(out)


def check_spec(loaded: LoadedSpec) -> list[Problem]:
    """Problems where a chain's resolved versions do not work together, at the line of the key that set them."""
    return [p for f, p in _located(loaded) if f.severity == "error"]


def notes(loaded: LoadedSpec) -> list[Problem]:
    """Things the matrix could not check (newer CPU torch, incomplete observed rows); not errors."""
    return [p for f, p in _located(loaded) if f.severity == "note"]
