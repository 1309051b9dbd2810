"""render: write an image's Dockerfile, provisioning scripts and Packer templates under one folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imagekit.errors import UsageError
from imagekit.fsutil import check_dir, refuse_special
from imagekit.inputs import clip
from imagekit.render.dockerfile import render_dockerfile, render_dockerignore
from imagekit.render.packer import render_packer
from imagekit.render.scripts import render_scripts
from imagekit.spec import LoadedSpec
from imagekit.weights_tar import stage_weight_tars

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
    """Render every image of a spec under out_dir (default: the spec's folder); unchanged files are left as they are.

    The spec gets the same checks as `validate` (files, digests, compatibility) first. Writes are all or nothing:
    every path is checked before anything is written, changed files are staged in a temp folder inside out_dir
    and then renamed into place, so a failure leaves the old set, never half of a new one.
    """
    from imagekit.api.spec import validate

    loaded = validate(path)
    out = Path(out_dir).absolute() if out_dir is not None else loaded.root
    check_dir(out, "render -o")
    files = render_files(loaded, out)
    plan: list[tuple[Path, bytes, int, bool]] = []
    for rel, (text, mode) in files.items():
        dest = out / rel
        check_dir(dest.parent, "render -o: the folder")
        if dest.is_dir():
            raise UsageError(f"render -o: {clip(str(dest))} is a folder where a file is to be written; move it away")
        refuse_special(dest, "render -o:")  # a committed link in the output folder is never written through
        data = text.encode("utf-8")
        same = dest.is_file() and dest.read_bytes() == data and (os.stat(dest).st_mode & 0o777) == mode
        plan.append((dest, data, mode, same))
    changed = [(dest, data, mode) for dest, data, mode, same in plan if not same]
    if changed:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".imagekit-render-", dir=out))
        try:
            staged = []
            for i, (dest, data, mode) in enumerate(changed):
                tmp = stage / str(i)
                tmp.write_bytes(data)
                os.chmod(tmp, mode)
                staged.append((tmp, dest))
            # one flush for the whole set instead of an fsync per file (thousands of layers, thousands of files)
            os.sync()
            for tmp, dest in staged:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, dest)
        except OSError as exc:
            raise UsageError(f"render -o {clip(str(out))}: cannot write: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    # the Dockerfiles ADD root-owned weights as tars from the context (imagekit/weights_tar.py): stage them, so a
    # plain `docker build` of what was rendered finds them (remote weights only once `build` has fetched them)
    for image, img in loaded.spec.images.items():
        if "docker" in img.targets:
            stage_weight_tars(loaded, image, present_only=True)
    return [Rendered(dest, not same) for dest, _data, _mode, same in plan]
