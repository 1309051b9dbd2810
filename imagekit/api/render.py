"""render: write an image's Dockerfile, provisioning scripts and Packer templates under one folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imagekit.errors import UsageError
from imagekit.fsutil import atomic_write
from imagekit.render.dockerfile import render_dockerfile, render_dockerignore
from imagekit.render.packer import render_packer
from imagekit.render.scripts import render_scripts
from imagekit.spec import LoadedSpec, load_spec

DOCKERFILES = "dockerfiles"
PROVISION = "provision"
PACKER = "packer"


@dataclass(frozen=True)
class Rendered:
    """One file `render` produced: where it is, and whether this run changed it."""

    path: Path
    changed: bool

    def to_json(self) -> dict[str, object]:
        """The `render --json` shape of one file."""
        return {"path": str(self.path), "changed": self.changed}


def render_files(loaded: LoadedSpec, out_dir: Path) -> dict[str, tuple[str, int]]:
    """DIR-relative path -> (text, mode) of everything `render -o DIR` writes. Pure apart from reading inputs."""
    out = out_dir.resolve()
    root = loaded.root.resolve()
    try:
        rel = root.relative_to(out)
    except ValueError:
        raise UsageError(
            f"the spec's folder {root} is not inside the output folder {out}, which is the Dockerfile's build "
            "context: pick -o at or above the spec's folder"
        ) from None
    src_prefix = "" if str(rel) == "." else rel.as_posix()
    files: dict[str, tuple[str, int]] = {}
    wheelhouse = _wheelhouse(loaded, out)
    for image, spec_image in loaded.spec.images.items():
        for layer, text in render_scripts(loaded, image, spec_image.targets[0]).items():
            files[f"{PROVISION}/{layer}.sh"] = (text, 0o755)
        if "docker" in spec_image.targets:
            name = f"{DOCKERFILES}/{image}.Dockerfile"
            text = render_dockerfile(
                loaded, image, src_prefix=src_prefix, scripts_prefix=PROVISION, wheelhouse=wheelhouse
            )
            files[name] = (text, 0o644)
            # BuildKit reads <Dockerfile>.dockerignore: byte-code caches stay out of the image, as out of the hash
            files[f"{name}.dockerignore"] = (render_dockerignore(), 0o644)
        if "ami" in spec_image.targets:
            for fname, text in render_packer(loaded, image).items():
                files[f"{PACKER}/{image}/{fname}"] = (text, 0o644)
    return dict(sorted(files.items()))


def _wheelhouse(loaded: LoadedSpec, out: Path) -> str | None:
    """build.wheelhouse as a context-relative folder, when it lies inside the output folder."""
    configured = loaded.spec.build.wheelhouse
    if not configured:
        return None
    try:
        return loaded.local(configured).relative_to(out).as_posix()
    except ValueError:
        return None  # outside the context: the docker target stages it into the context itself


def render(path: Path | str | None, out_dir: Path | str | None = None) -> list[Rendered]:
    """Render every image of a spec under out_dir (default: the spec's folder); unchanged files are left as they are."""
    loaded = load_spec(path)
    out = Path(out_dir).absolute() if out_dir is not None else loaded.root
    written: list[Rendered] = []
    for rel, (text, mode) in render_files(loaded, out).items():
        dest = out / rel
        data = text.encode("utf-8")
        same = dest.is_file() and dest.read_bytes() == data and (os.stat(dest).st_mode & 0o777) == mode
        if not same:
            atomic_write(dest, data, mode=mode)
        written.append(Rendered(dest, not same))
    return written
