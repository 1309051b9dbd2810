"""Multi-stage Dockerfile per image: one stage per layer, secrets only as mounts. Pure.

Why the FROM lines look the way they do: the root stage starts from the build arg BASE_IMAGE, every child from the
build arg IMAGEKIT_PARENT_<LAYER> whose default is the parent's stage name. Built whole, BuildKit resolves the default
to the earlier stage; the docker runner instead builds one layer at a time (`--target <layer>`) and points the arg at
the parent layer's tagged image, so an unchanged parent is never rebuilt. Checked on Debian's docker.io 20.10.24 with
DOCKER_BUILDKIT=1 (tests/test_render_docker.py builds both ways).

A virtualenv is installed in its layer's own stage, not in a builder stage whose venv is copied over: the copy cost a
5 GB CUDA venv ~25 s of snapshot and COPY on top of the install (bench/seed_bench.py, seed_cold_runtime). A lock is
installed in parts (render/install.py), one RUN each, heavy first; each RUN also removes any compilers it needed (as
the AMI's script does). A small `<layer>-lock` stage cuts the lock into its parts, and each RUN mounts only its own
part from there: BuildKit keys a mount by its content, so a changed light pin leaves the heavy RUNs cached and their
layers' digests unchanged. buildah 1.28 does neither (it cannot mount a stage it took from its cache, and keys a RUN
by its text, not by what it mounts), so the buildah engine reruns the lock stage on every build (LOCK_RUN_ARG), and
the stage's hash LABEL makes a changed layer rerun its RUNs there.
"""

from __future__ import annotations

import json
import posixpath
import re

from imagekit.errors import UsageError
from imagekit.names import (
    LABEL_PREFIX,
    LOCK_RUN_ARG,
    MODELS_DIR,
    REBUILD_ARG,
    SRC_DIR,
    VENV,
    base_tag,
    nvidia_require_cuda,
)
from imagekit.plan import plan_image
from imagekit.render.install import LOCK_PARTS_DIR, lock_parts
from imagekit.render.scripts import layer_steps, model_owner
from imagekit.render.upgrade import UPGRADE_RUN
from imagekit.spec import LoadedSpec
from imagekit.weights_tar import as_tar, tar_name

OCI = "org.opencontainers.image"
WHEELS_DIR = "/wheels"
SCRIPT_DIR = "/tmp/imagekit"  # noqa: S108 - a mount point inside the build, nothing stays there
# uv's and pip's download caches: a BuildKit cache mount outlives `--force` and a refresh (which re-run every RUN
# through REBUILD_ARG, not --no-cache, which would empty it) and the image; nothing of it enters a layer. One cache
# per spec: its images and layers share downloads, while another project's builds on the same engine can neither
# read nor seed what this one installs.
CACHE_DIR = "/root/.cache/imagekit"


def cache_mount(spec_name: str) -> str:
    """The RUN flag that mounts the spec's package cache at CACHE_DIR."""
    return f"--mount=type=cache,id=imagekit-pkgs-{spec_name},target={CACHE_DIR}"


STAGE_NAME = re.compile(r"^[a-z][a-z0-9._-]*$")
NONROOT_UID = "65532:65532"  # the conventional non-root id, used when the spec names no user
# BuildKit reads `<Dockerfile>.dockerignore` next to the Dockerfile (checked on 20.10.24). The plan hash ignores
# byte-code caches, so they must not enter the image either.
DOCKERIGNORE = "**/__pycache__\n**/*.pyc\n**/*.pyo\n**/.git\n"


def parent_arg(layer: str) -> str:
    """The build arg a child stage starts from: IMAGEKIT_PARENT_<LAYER> (non-alphanumerics become _)."""
    return "IMAGEKIT_PARENT_" + "".join(c if c.isalnum() else "_" for c in layer.upper())


def _ctx(prefix: str, rel: str) -> str:
    """A context-relative path: `prefix/rel`, keeping a trailing slash."""
    joined = posixpath.join(prefix, rel) if prefix else rel
    norm = posixpath.normpath(joined)
    return norm + ("/" if rel.endswith("/") and norm != "." else "")


def _copy(src: str, dest: str, *flags: str, verb: str = "COPY") -> str:
    pre = " ".join((verb, *flags))
    if re.search(r"\s", src + dest):
        return f"{pre} {json.dumps([src, dest], ensure_ascii=False)}"
    return f"{pre} {src} {dest}"


def _env_value(value: str) -> str:
    # ENV values are double-quoted with \ and " and $ escaped, so nothing is expanded or split.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _label(key: str, value: str) -> str:
    return f"{key}={_env_value(value)}"


def _run(
    script: str,
    layer: str,
    phases: list[str],
    *,
    mounts: list[str],
    env: dict[str, str] | None = None,
) -> str:
    target = f"{SCRIPT_DIR}/{layer}.sh"
    all_mounts = [f"--mount=type=bind,source={script},target={target}", *mounts]
    assigns = " ".join(f"{k}={v}" for k, v in {"IMAGEKIT_TARGET": "docker", **(env or {})}.items())
    lines = [f"RUN {all_mounts[0]}"] + [f"    {m}" for m in all_mounts[1:]]
    lines.append(f"    {assigns} sh {target} {' '.join(phases)}")
    return " \\\n".join(lines)


def _health_cmd(port: int, path: str, python: str) -> str:
    # curl is not in every image; python is wherever the service runs. urlopen raises on a non-2xx answer.
    code = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5)"
    return json.dumps([python, "-c", code])


def _check_stage_names(image: str, layers: list[str]) -> None:
    """Stage names BuildKit accepts."""
    for name in layers:
        if not STAGE_NAME.fullmatch(name):
            raise UsageError(f"image {image}: layer {name!r} cannot name a Dockerfile stage (start it with a letter)")


def render_dockerignore() -> str:
    """The `<Dockerfile>.dockerignore` that goes next to every rendered Dockerfile."""
    return DOCKERIGNORE


def render_dockerfile(
    loaded: LoadedSpec,
    image: str,
    *,
    src_prefix: str = "",
    scripts_prefix: str = "provision",
    wheelhouse: str | None = None,
) -> str:
    """The multi-stage Dockerfile of an image; COPY and mount paths are relative to the build context."""
    spec = loaded.spec
    if image not in spec.images:
        raise UsageError(f"unknown image {image!r} (images: {', '.join(spec.images)})")
    chain = loaded.chain(image)
    hashes = {lp.name: lp.hash for lp in plan_image(loaded, image, "docker").layers}
    root_name, root = chain[0]
    src = root.from_
    if src is not None and src.bootstrap is not None:
        # the tag the docker target gives a bootstrapped base: imagekit-base-<layer>:<definition hash16>
        base_default = base_tag(root_name, src.bootstrap)
    elif src is not None and src.docker:
        base_default = src.docker
    else:
        raise UsageError(
            f"image {image}: layer {root_name} has no from.docker or from.bootstrap, so it cannot be a container"
        )
    _check_stage_names(image, [name for name, _ in chain])
    taken = {f"{name}-lock" for name, _ in chain} & {name for name, _ in chain}
    if taken:
        raise UsageError(f"image {image}: layer {sorted(taken)[0]!r} has the name of another layer's lock stage")
    args = {parent_arg(name): layer.parent for name, layer in chain if layer.parent}
    if len(set(args)) != len(chain) - 1:
        raise UsageError(f"image {image}: two layer names map to the same build arg ({', '.join(sorted(args))})")

    secret_mounts = ["--mount=type=secret,id=ca", "--mount=type=secret,id=pipconf,required=false"]
    wheel_env: dict[str, str] = {}
    wheel_mounts: list[str] = []
    if wheelhouse:
        wheel_mounts = [f"--mount=type=bind,source={_ctx('', wheelhouse.rstrip('/'))},target={WHEELS_DIR}"]
        wheel_env = {"PIP_FIND_LINKS": WHEELS_DIR}

    out = [
        f"# Dockerfile of image {image} (spec {spec.name}). Generated by `imagekit render`: do not edit.",
        "# Build with BuildKit (DOCKER_BUILDKIT=1). One stage per layer: `--target <layer>` builds a layer, and",
        "# `--build-arg IMAGEKIT_PARENT_<LAYER>=<image>` starts it from its parent's built image instead of the stage.",
        "# Secrets only as BuildKit secrets: `--secret id=ca,src=<CA bundle>` [`--secret id=pipconf,src=<pip.conf>`].",
        "# Weights tars (ADD .imagekit/weights/*.tar) are written by `imagekit render` and `imagekit build`.",
        f"ARG BASE_IMAGE={base_default}",
        *(f"ARG {arg}={parent}" for arg, parent in args.items()),
    ]
    has_venv = False
    for index, (name, layer) in enumerate(chain):
        steps = layer_steps(loaded, name)
        phases = steps.phases
        start = "${BASE_IMAGE}" if layer.parent is None else "${" + parent_arg(name) + "}"
        script = _ctx(scripts_prefix, f"{name}.sh")
        lock_mount = ""
        if steps.pip_work and layer.requirements:
            lock_mount = (
                f"--mount=type=bind,source={_ctx(src_prefix, layer.requirements)},target={SRC_DIR}/{layer.requirements}"
            )
            # LOCK_RUN_ARG: buildah reruns this stage on every build (names.py says why); BuildKit keys it by the lock
            out += ["", f"FROM {start} AS {name}-lock", "# hadolint ignore=DL3002", "USER root", f"ARG {LOCK_RUN_ARG}"]
            out.append(_run(script, name, ["lock-parts"], mounts=[lock_mount]))
        out.append("")
        out += [f"FROM {start} AS {name}", f"LABEL {_label(f'{LABEL_PREFIX}.layer.{name}.hash', hashes[name])}"]
        # Provisioning needs root; the start image may end with a non-root USER (a base image's own, or a parent
        # layer that is some other image's leaf), so each stage says so. The final stage switches back below.
        out += ["# hadolint ignore=DL3002", "USER root", f"ARG {REBUILD_ARG}"]
        # Weights first, one ADD/COPY (one image layer) each, straight on the parent: a change to anything else in
        # the layer (code, apt, user, venv) leaves their layers and digests as they were, so a rebuild re-copies and a
        # push re-uploads nothing of them (as cog's --separate-weights). A changed model rebuilds from its own step.
        for model in layer.models:
            if model.mode:
                continue  # owned by the service user: copied once the system phase made that user (below)
            if as_tar(model):
                # a tar with fixed times, owner and modes (imagekit/weights_tar.py): the same layer on any parent
                out.append(_copy(_ctx(src_prefix, tar_name(model)), "/", verb="ADD"))
                continue
            rel = f"{MODELS_DIR}/{model.sha256}" if model.is_remote else model.src
            out.append(_copy(_ctx(src_prefix, rel), model.dest, "--chmod=0444"))
        if layer.parent is None:
            # the distribution's updates after the weights, so a refresh's new upgrade leaves the weight layers
            out.append(UPGRADE_RUN)
        stage_phases = [p for p in ("system",) if p in phases]
        if not steps.pip_work and "venv" in phases:
            stage_phases.append("venv")
        if stage_phases:
            out.append(_run(script, name, stage_phases, mounts=[]))
        if steps.pip_work:
            # The venv part by part (the lock's heavy groups first, then the rest): compilers come in only for a package
            # without a wheel and leave in the same RUN, so no layer holds them; downloads stay in the spec's BuildKit
            # cache mount for the next build.
            install: list[str] = [p for p in ("build-deps", "venv", "install", "drop-build-deps") if p in phases]
            pip_mounts = [*secret_mounts, *wheel_mounts, cache_mount(spec.name)]
            pip_env = {**wheel_env, "IMAGEKIT_CACHE": CACHE_DIR}
            if layer.requirements:
                for part in lock_parts(layer):
                    part_mount = (
                        f"--mount=type=bind,from={name}-lock,source={LOCK_PARTS_DIR}/{part},"
                        f"target={SRC_DIR}/{layer.requirements}"
                    )
                    run_env = {**pip_env, "IMAGEKIT_PART": part}
                    out.append(_run(script, name, install, mounts=[part_mount, *pip_mounts], env=run_env))
            else:
                out.append(_run(script, name, install, mounts=pip_mounts, env=pip_env))
        for model in layer.models:
            if model.mode:
                owner = model_owner(loaded, name)
                rel = f"{MODELS_DIR}/{model.sha256}" if model.is_remote else model.src
                out.append(
                    _copy(_ctx(src_prefix, rel), model.dest, f"--chown={owner}:{owner}", f"--chmod={model.mode}")
                )
        if (steps.pip_work or "venv" in phases) and not has_venv:
            out.append(f'ENV VIRTUAL_ENV={VENV} PATH="{VENV}/bin:$PATH"')
            has_venv = True
        for item in layer.copy_:
            out.append(_copy(_ctx(src_prefix, item.src), item.dest))
        if layer.env:
            out.append("ENV " + " ".join(f"{k}={_env_value(v)}" for k, v in sorted(layer.env.items())))
        if layer.workdir:
            out.append(f"WORKDIR {layer.workdir}")
        if "run" in phases:
            out.append(_run(script, name, ["run"], mounts=[]))
        if index == len(chain) - 1:
            out += _final(loaded, image, resolved_python="python" if has_venv else "python3", hashes=hashes)
    return "\n".join(out) + "\n"


def _final(loaded: LoadedSpec, image: str, *, resolved_python: str, hashes: dict[str, str]) -> list[str]:
    spec = loaded.spec
    res = loaded.resolved(image)
    leaf = spec.images[image].leaf
    out = []
    require = nvidia_require_cuda(res.cuda)
    if require:
        # the CUDA floor travels with the image: the NVIDIA container runtime checks it against the host's driver
        out.append(f"ENV NVIDIA_REQUIRE_CUDA={_env_value(require)}")
    out.append(f"USER {res.user or NONROOT_UID}")
    if res.port:
        out.append(f"EXPOSE {res.port}")
    health = loaded.verify_for(image).health
    if health is not None and res.port:
        start = max(1, round(health.timeout))
        out.append(
            f"HEALTHCHECK --interval=30s --timeout=10s --start-period={start}s --retries=3 "
            f"CMD {_health_cmd(res.port, health.path, resolved_python)}"
        )
    if res.command:
        out.append(f"CMD {json.dumps(list(res.command), ensure_ascii=False)}")
    # no driver pin: the driver is the host's (AMI-only), and a changed pin must not change the docker image
    pins = {"cuda": res.cuda, "cudnn": res.cudnn, "python": res.python, "torch": res.torch}
    labels = {
        f"{OCI}.title": image,
        f"{OCI}.version": hashes[leaf][:16],
        f"{OCI}.description": f"imagekit image {image} of spec {spec.name}: layers {' > '.join(hashes)}",
        **{f"{LABEL_PREFIX}.pin.{k}": v for k, v in sorted(pins.items()) if v},
        f"{LABEL_PREFIX}.spec": spec.name,
        f"{LABEL_PREFIX}.image": image,
    }
    # revision and source are build args so the text stays the same from one commit to the next; created is left out.
    out += [
        'ARG IMAGEKIT_REVISION=""',
        'ARG IMAGEKIT_SOURCE=""',
        "LABEL " + " \\\n    ".join(_label(k, v) for k, v in sorted(labels.items())),
        f'LABEL {OCI}.revision="${{IMAGEKIT_REVISION}}" \\\n    {OCI}.source="${{IMAGEKIT_SOURCE}}"',
    ]
    return out
