"""build: spec -> images. The docker target lives here; the ami target is dispatched to imagekit.ami."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from imagekit.errors import BuildFailed, ImagekitError, Problem, SpecError, UsageError, VerifyFailed
from imagekit.events import Event, Reporter, silent
from imagekit.fetch import fetch_model, stage
from imagekit.fsutil import atomic_write
from imagekit.paths import log_dir
from imagekit.plan import LayerPlan, plan_image
from imagekit.render.dockerfile import parent_arg
from imagekit.runners.docker import LABEL_PREFIX, DockerEngine, is_error_line, parse_step
from imagekit.spec import LoadedSpec
from imagekit.timefmt import iso_utc

DEFAULT_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Context-relative folders the docker build uses (the build context is the spec folder).
RENDER_DIR = ".imagekit/render"
SCRIPTS_PREFIX = f"{RENDER_DIR}/provision"
WHEELHOUSE_DIR = ".imagekit/wheelhouse"
MODELS_DIR = ".imagekit/models"
LOG_TAIL = 25
# tag -> a context held around building that layer; it yields True when another build already made the tag
LayerLock = Callable[[str], contextlib.AbstractContextManager[bool]]


@dataclass
class LayerResult:
    """One layer of a built image: its hash, tag, and whether this run built it or reused the tagged image."""

    name: str
    hash: str
    tag: str
    status: Literal["built", "reused"]
    seconds: float
    image_id: str = ""
    reason: str = ""


@dataclass
class BaseResult:
    """Where the root layer started: a bootstrapped base or a docker reference, with what it resolved to."""

    kind: Literal["bootstrap", "docker"]
    ref: str
    image_id: str
    digest: str = ""
    built: bool = False
    seconds: float = 0.0


@dataclass
class ImageResult:
    """One image built for one target."""

    image: str
    target: str
    layers: list[LayerResult] = field(default_factory=list)
    ref: str = ""
    tags: list[str] = field(default_factory=list)
    image_id: str = ""
    size: int = 0
    repo_digest: str = ""
    pushed: str = ""
    base: BaseResult | None = None
    log_path: str = ""
    verify_report: str = ""
    manifest_id: str = ""
    manifest_path: str = ""
    manifest_passed: bool | None = None
    attestations: str = ""
    started: str = ""
    finished: str = ""
    seconds: float = 0.0

    @property
    def built_layers(self) -> list[str]:
        """Names of the layers this run built (not reused)."""
        return [lr.name for lr in self.layers if lr.status == "built"]


@dataclass
class BuildResult:
    """What `imagekit build` did, as data (the CLI prints it; `--json` dumps `to_json()`)."""

    spec: str
    target: str
    images: list[ImageResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return asdict(self)

    def image(self, name: str) -> ImageResult:
        """The result of one image by name."""
        return next(r for r in self.images if r.image == name)


def build(  # noqa: PLR0917 (the shared contract: build(path, target, images, force, push, reporter))
    path: Path | str | None,
    target: str,
    images: list[str] | None = None,
    force: bool = False,
    push: str | None = None,
    reporter: Reporter = silent,
    *,
    verify: bool = True,
    engine: DockerEngine | None = None,
    rehearse: bool = False,
    force_layers: Collection[str] = (),
    layer_lock: LayerLock | None = None,
    on_built: Callable[[ImageResult], None] | None = None,
) -> BuildResult:
    """Build the spec's images for one target (docker or ami), reusing layers whose hash is already built."""
    from imagekit.api.spec import validate

    if target not in ("docker", "ami"):
        raise UsageError(f"--target must be docker or ami, not {target!r}")
    loaded = validate(path)
    selected = select_images(loaded, target, images)
    if target == "ami":
        if push:
            raise UsageError("--push applies to --target docker (AMIs are copied with aws.ami_regions)")
        # the AMI helper owns this path: Packer amazon-ebs per layer (imagekit/ami)
        from imagekit.ami import build_ami
        from imagekit.ami.build import as_build_result

        ami = build_ami(loaded, selected, force, reporter, rehearse=rehearse, verify=verify)
        return as_build_result(loaded, ami)
    if rehearse:
        raise UsageError("--rehearse applies to --target ami (a local moto EC2 with sshd containers)")
    if push and len(selected) > 1:
        raise UsageError(f"--push takes one image; pick it with --image ({', '.join(selected)})")
    # every remote model of every selected image is fetched and checked before the engine is asked anything
    for name in selected:
        _stage_models(loaded, name, reporter)
    engine = engine or DockerEngine()
    out = BuildResult(spec=str(loaded.path), target=target)
    for name in selected:
        res = build_docker_image(
            loaded, name, engine=engine, force=force, push=push, reporter=reporter,
            force_layers=force_layers, layer_lock=layer_lock,
        )  # fmt: skip
        out.images.append(res)
        if on_built is not None:
            # nightly needs what was built even when the verification after it raises
            on_built(res)
        if verify:
            try:
                res.verify_report = verify_image(loaded, res, reporter)
            except VerifyFailed as exc:
                # a failed verification is a record too, clearly marked failed, so it can never be promoted
                res.verify_report = exc.report_path
                record_image(loaded, res, engine, reporter, failure="; ".join(exc.failures) or str(exc))
                raise
            record_image(loaded, res, engine, reporter)
    return out


def select_images(loaded: LoadedSpec, target: str, images: list[str] | None) -> list[str]:
    """The images to build: the named ones (each must build for target), else all that build for target."""
    spec = loaded.spec
    if images:
        from imagekit.api.spec import check_images

        check_images(loaded, images)
        wrong = [i for i in images if target not in spec.images[i].targets]
        if wrong:
            raise UsageError(f"image {wrong[0]} does not list target {target} (images.{wrong[0]}.targets)")
        return list(images)
    chosen = [n for n, img in spec.images.items() if target in img.targets]
    if not chosen:
        raise UsageError(f"no image in {loaded.file} lists target {target}")
    return chosen


def layer_repository(loaded: LoadedSpec, layer: str) -> str:
    """`imagekit/<spec name>-<layer>`: where a layer's image is tagged by its hash."""
    return f"imagekit/{loaded.spec.name}-{layer}"


def layer_tag(loaded: LoadedSpec, layer: str, digest: str) -> str:
    """`imagekit/<spec name>-<layer>:<hash16>`."""
    return f"{layer_repository(loaded, layer)}:{digest[:16]}"


def _parent_args(loaded: LoadedSpec, image: str, tags: dict[str, str]) -> dict[str, str]:
    # every child whose parent is already tagged starts from that image, never from the parent's stage
    return {
        parent_arg(name): tags[layer.parent]
        for name, layer in loaded.chain(image)
        if layer.parent is not None and layer.parent in tags
    }


def build_docker_image(
    loaded: LoadedSpec,
    image: str,
    *,
    engine: DockerEngine,
    force: bool = False,
    push: str | None = None,
    reporter: Reporter = silent,
    force_layers: Collection[str] = (),
    layer_lock: LayerLock | None = None,
) -> ImageResult:
    """Build one image's stale layers root first with BuildKit, tag each by hash, tag (and push) the final image.

    force_layers: layers rebuilt without the BuildKit cache even when their tag exists (nightly refresh, upstream
    drift). layer_lock(tag): held around each layer build; it yields True when another build of this run already
    made that tag, which is then reused, so concurrent images build a shared parent layer once.
    """
    t0 = time.monotonic()
    res = ImageResult(image=image, target="docker", started=iso_utc())
    log_path = log_dir() / f"build-{loaded.spec.name}-{image}-docker-{time.strftime('%Y%m%dT%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    res.log_path = str(log_path)
    reporter(Event("info", f"full log: {log_path}", image, "", "docker"))

    def lookup(_img: str, _tgt: str, layer: str, digest: str) -> str | None:
        tag = layer_tag(loaded, layer, digest)
        if force or layer in force_layers:
            return None
        return f"image {tag} exists" if engine.exists(tag) else None

    plan = plan_image(loaded, image, "docker", lookup=lookup)
    root = loaded.root
    with log_path.open("a", encoding="utf-8") as log, _note_failure(log), _secrets(loaded) as secrets:
        log.write(f"# imagekit build {loaded.path} image={image} target=docker started={res.started}\n")
        # 1. the root layer's base: bootstrapped (cached by definition hash) or a docker reference
        root_name, _root_layer = loaded.chain(image)[0]
        res.base = _ensure_base(loaded, image, root_name, engine, force=force, reporter=reporter, log=log)
        # 2. render the Dockerfile and scripts into the context
        wheelhouse = _stage_wheelhouse(loaded, image, reporter)
        dockerfile = _render(loaded, image, wheelhouse)
        build_args = {"BASE_IMAGE": res.base.ref}
        tags: dict[str, str] = {}
        for lp in plan.layers:
            tag = layer_tag(loaded, lp.name, lp.hash)
            if lp.status == "cached":
                info = engine.inspect(tag)
                reporter(Event("cached", f"{tag} ({lp.reason})", image, lp.name, "docker"))
                res.layers.append(LayerResult(lp.name, lp.hash, tag, "reused", 0.0, info.id if info else "", lp.reason))
            else:
                with layer_lock(tag) if layer_lock else contextlib.nullcontext(False) as built_elsewhere:
                    info = engine.inspect(tag) if built_elsewhere else None
                    if info is not None:
                        why = "built by another image of this run"
                        reporter(Event("cached", f"{tag} ({why})", image, lp.name, "docker"))
                        res.layers.append(LayerResult(lp.name, lp.hash, tag, "reused", 0.0, info.id, why))
                    else:
                        res.layers.append(
                            _build_layer(
                                loaded, image, lp, tag, engine=engine, dockerfile=dockerfile, context=root,
                                build_args={**build_args, **_parent_args(loaded, image, tags)},
                                secrets=secrets, force=force or lp.name in force_layers, log=log,
                                log_path=log_path, reporter=reporter,
                            )
                        )  # fmt: skip
            tags[lp.name] = tag
        leaf = res.layers[-1]
        repo = loaded.spec.images[image].repository or image
        final = f"{repo}:{leaf.hash[:16]}"
        engine.tag(leaf.tag, repo, leaf.hash[:16])
        engine.tag(leaf.tag, repo, "latest")
        res.ref, res.tags = final, [final, f"{repo}:latest"]
        info = engine.inspect(final)
        res.image_id = info.id if info else leaf.image_id
        res.size = info.size if info else 0
        if push:
            res.repo_digest, res.pushed = _push(engine, final, push, image=image, reporter=reporter, log=log)
        res.finished = iso_utc()
        res.seconds = round(time.monotonic() - t0, 1)
        log.write(f"# finished {res.finished} image={res.ref} id={res.image_id}\n")
    reporter(Event("done", f"{res.ref} ({_mb(res.size)}, {res.seconds:.0f}s)", image, "", "docker"))
    return res


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def _build_layer(
    loaded: LoadedSpec,
    image: str,
    lp: LayerPlan,
    tag: str,
    *,
    engine: DockerEngine,
    dockerfile: Path,
    context: Path,
    build_args: dict[str, str],
    secrets: dict[str, Path],
    force: bool,
    log: IO[str],
    log_path: Path,
    reporter: Reporter,
) -> LayerResult:
    reporter(Event("start", f"{tag} ({lp.reason})", image, lp.name, "docker"))
    log.write(f"\n# ---- layer {lp.name} -> {tag} ({lp.reason})\n")
    log.flush()
    last: list[str] = [""]

    def on_line(line: str) -> None:
        step = parse_step(line)
        if step is not None and str(step) != last[0]:
            last[0] = str(step)
            reporter(Event("step", str(step), image, lp.name, "docker"))
        else:
            reporter(Event("log", line, image, lp.name, "docker"))

    labels = {
        f"{LABEL_PREFIX}.layer.hash": lp.hash,
        f"{LABEL_PREFIX}.layer": lp.name,
        f"{LABEL_PREFIX}.spec": loaded.spec.name,
    }
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imagekit-iid-") as tmp:
        iid = Path(tmp) / "iid"
        result = engine.build(
            context, dockerfile=dockerfile, target=lp.name, tags=[tag], build_args=build_args, labels=labels,
            secrets=secrets, no_cache=force, iidfile=iid, log=log, on_line=on_line,
        )  # fmt: skip
        image_id = iid.read_text().strip() if iid.exists() else ""
    seconds = round(time.monotonic() - t0, 1)
    if not result.ok:
        tail = result.tail[-LOG_TAIL:]
        errors = [line for line in result.tail if is_error_line(line)]
        why = errors[-1].strip() if errors else f"docker build exited {result.returncode}"
        reporter(Event("fail", why, image, lp.name, "docker"))
        raise BuildFailed(
            f"layer {lp.name} failed to build: {why}",
            image=image,
            layer=lp.name,
            log_tail=tail,
            log_path=str(log_path),
        )
    # The Dockerfile stamps each stage with the layer hash it computed when rendering; files edited while a build
    # runs would put other content under this tag, so such a tag is dropped rather than reused later.
    info = engine.inspect(tag)
    stamped = (info.labels if info else {}).get(f"{LABEL_PREFIX}.layer.{lp.name}.hash")
    if stamped and stamped != lp.hash:
        engine.remove_image(tag)
        raise BuildFailed(
            f"layer {lp.name}: its input files changed while it was building (planned {lp.hash[:16]}, "
            f"built {stamped[:16]}); run the build again",
            image=image,
            layer=lp.name,
            log_path=str(log_path),
        )
    reporter(Event("done", f"{tag} in {seconds:.0f}s", image, lp.name, "docker"))
    return LayerResult(lp.name, lp.hash, tag, "built", seconds, image_id, lp.reason)


def _ensure_base(
    loaded: LoadedSpec,
    image: str,
    root_name: str,
    engine: DockerEngine,
    *,
    force: bool,
    reporter: Reporter,
    log: IO[str],
) -> BaseResult:
    root_layer = loaded.spec.layers[root_name]
    src = root_layer.from_
    key = ("layers", root_name, "from")
    if src is not None and src.bootstrap is not None:
        from imagekit.runners.bootstrap import ensure_base

        # --force rebuilds layers, not the distribution base (minutes of debootstrap for the same packages)
        base = ensure_base(engine, root_name, src.bootstrap, reporter=reporter, log=log, image=image)
        return BaseResult("bootstrap", base.tag, base.image_id, base.hash, base.built, round(base.seconds, 1))
    if src is not None and src.docker:
        reporter(Event("step", f"resolving base {src.docker}", image, root_name, "docker"))
        try:
            info = engine.resolve(src.docker)
        except BuildFailed as exc:
            raise BuildFailed(
                f"{exc} (with no registry, start from `from: {{bootstrap: ...}}`, or `docker load` the image first)",
                image=image,
                layer=root_name,
                log_path=getattr(log, "name", ""),
            ) from None
        repo = src.docker.split("@", 1)[0].rsplit(":", 1)[0] if "/" in src.docker else src.docker.split(":")[0]
        digest = next((d for d in info.repo_digests if d.split("@", 1)[0] == repo), "")
        if not digest and info.repo_digests:
            digest = info.repo_digests[0]
        # build from the exact image that was resolved (repo@sha256:...), so the record and the build agree; a
        # local-only image has no repo digest, and BuildKit cannot start FROM a bare image id, so its ref is kept
        ref = digest or src.docker
        return BaseResult("docker", ref, info.id, digest.split("@", 1)[1] if "@" in digest else info.id)
    raise SpecError(
        [
            Problem(
                loaded.file,
                loaded.line_of(*key) or loaded.line_of("layers", root_name),
                ".".join(key),
                "the root layer needs from.docker or from.bootstrap for the docker target",
                "add `from: {bootstrap: {distro: debian, suite: bookworm}}` to build with no registry",
            )
        ]
    )


def _render(loaded: LoadedSpec, image: str, wheelhouse: str | None) -> Path:
    """Render the Dockerfile and provisioning scripts into <spec>/.imagekit/render (written only when changed)."""
    from imagekit.render.dockerfile import render_dockerfile, render_dockerignore
    from imagekit.render.scripts import render_scripts

    out = loaded.root / RENDER_DIR
    for layer, text in sorted(render_scripts(loaded, image, "docker").items()):
        _write_if_changed(out / "provision" / f"{layer}.sh", text, 0o755)
    dockerfile = out / f"{image}.Dockerfile"
    text = render_dockerfile(loaded, image, src_prefix="", scripts_prefix=SCRIPTS_PREFIX, wheelhouse=wheelhouse)
    _write_if_changed(dockerfile, text, 0o644)
    # BuildKit reads <Dockerfile>.dockerignore next to the Dockerfile: byte-code caches stay out of the image
    _write_if_changed(out / f"{image}.Dockerfile.dockerignore", render_dockerignore(), 0o644)
    return dockerfile


def _write_if_changed(path: Path, text: str, mode: int) -> None:
    # unchanged files keep their mtime, so BuildKit's context transfer and the digest cache stay warm
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, mode=mode)


def _stage_wheelhouse(loaded: LoadedSpec, image: str, reporter: Reporter) -> str | None:
    """Mirror build.wheelhouse into the context (hard links, else copies); None when unset or absent."""
    configured = loaded.spec.build.wheelhouse
    if not configured:
        return None
    src = loaded.local(configured)
    if not src.is_dir():
        reporter(Event("info", f"wheelhouse {src} is not here; pip uses the index", image, "", "docker"))
        return None
    dest = loaded.root / WHEELHOUSE_DIR
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p for p in src.iterdir() if p.is_file()}
    for old in dest.iterdir():
        if old.name not in wanted:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
    for name, path in sorted(wanted.items()):
        stage(path, dest / name)
    reporter(Event("info", f"wheelhouse {src}: {len(wanted)} files", image, "", "docker"))
    return WHEELHOUSE_DIR


def _stage_models(loaded: LoadedSpec, image: str, reporter: Reporter) -> None:
    """Fetch and check every remote model of the chain, then link it into <spec>/.imagekit/models/<sha256>."""
    ca = _ca_bundle(loaded)
    for layer_name, layer in loaded.chain(image):
        for model in layer.models:
            if not model.is_remote:
                continue
            cached = fetch_model(model, ca_bundle=ca, reporter=reporter, image=image, layer=layer_name)
            stage(cached, loaded.root / MODELS_DIR / model.sha256)


def model_context_path(sha256: str) -> str:
    """Where a fetched remote model sits in the build context (what the Dockerfile COPYs)."""
    return f"{MODELS_DIR}/{sha256}"


def _ca_bundle(loaded: LoadedSpec) -> Path | None:
    configured = loaded.spec.build.ca_bundle
    if configured:
        path = loaded.local(configured)
        if not path.is_file():
            raise SpecError(
                [
                    Problem(
                        loaded.file,
                        loaded.line_of("build", "ca_bundle"),
                        "build.ca_bundle",
                        f"{configured!r} does not exist",
                    )
                ]
            )
        return path
    return DEFAULT_CA_BUNDLE if DEFAULT_CA_BUNDLE.is_file() else None


@contextlib.contextmanager
def _note_failure(log: IO[str]) -> Iterator[None]:
    """Write why a build stopped at the end of its log, so the file alone tells the story."""
    try:
        yield
    except ImagekitError as exc:
        log.write(f"\n# failed: {exc}\n")
        raise
    except KeyboardInterrupt:
        log.write("\n# interrupted\n")
        raise


@contextlib.contextmanager
def _secrets(loaded: LoadedSpec) -> Iterator[dict[str, Path]]:
    """BuildKit secrets: `ca` (the CA bundle) and `pipconf` (index settings) — never copied into a layer."""
    secrets: dict[str, Path] = {}
    ca = _ca_bundle(loaded)
    if ca is not None:
        secrets["ca"] = ca
    index = loaded.spec.build.pip_index_url or os.environ.get("PIP_INDEX_URL")
    extra = os.environ.get("PIP_EXTRA_INDEX_URL")
    if not index and not extra:
        yield secrets
        return
    lines = ["[global]"]
    if index:
        lines.append(f"index-url = {index}")
    if extra:
        lines.append(f"extra-index-url = {extra}")
    if ca is not None:
        lines.append("cert = /run/secrets/ca")
    # index URLs may carry credentials: a private temp file outside the build context
    fd, name = tempfile.mkstemp(prefix="imagekit-pipconf-", suffix=".conf")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        secrets["pipconf"] = Path(name)
        yield secrets
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _push(
    engine: DockerEngine, final: str, dest: str, *, image: str, reporter: Reporter, log: IO[str]
) -> tuple[str, str]:
    _repo, _, tag = final.rpartition(":")
    dest_repo, dest_tag = dest, tag
    last = dest.rsplit("/", 1)[-1]
    if ":" in last:
        dest_repo, dest_tag = dest.rsplit(":", 1)
    reporter(Event("start", f"push {dest_repo}:{dest_tag}", image, "", "docker"))
    engine.tag(final, dest_repo, dest_tag)

    def on_line(line: str) -> None:
        log.write(f"push: {line}\n")

    digest = engine.push(dest_repo, dest_tag, on_line=on_line)
    reporter(Event("done", f"pushed {dest_repo}@{digest}", image, "", "docker"))
    return digest, f"{dest_repo}@{digest}"


def verify_image(loaded: LoadedSpec, res: ImageResult, reporter: Reporter) -> str:
    """Boot-and-verify the built image through the verify helper's api, when it is installed."""
    import importlib

    try:
        verify_api = importlib.import_module("imagekit.api.verify")
    except ModuleNotFoundError as exc:
        if exc.name != "imagekit.api.verify":
            raise
        reporter(Event("warn", "verify is not available in this install; skipped", res.image, "", "docker"))
        return ""
    verify_docker: Any = getattr(verify_api, "verify_docker", None)
    if verify_docker is None:
        reporter(Event("warn", "verify_docker is not available; skipped", res.image, "", "docker"))
        return ""
    report = verify_docker(loaded.path, res.ref, image=res.image, reporter=reporter)
    if isinstance(report, str | Path):
        return str(report)
    return str(getattr(report, "path", "") or getattr(report, "report_path", "") or "")


def record_image(
    loaded: LoadedSpec, res: ImageResult, engine: DockerEngine, reporter: Reporter, *, failure: str | None = None
) -> None:
    """Sign and store the build's manifest (in-toto statement in a DSSE envelope) after verification."""
    from imagekit.manifest.record import record_build

    builders: dict[str, str] = {}
    with contextlib.suppress(Exception):  # the engine version is a nicety in the record, never a reason to fail
        builders["docker"] = str(engine.client.version().get("Version", ""))
    base = base_id = recipe = None
    if res.base is not None:
        # the reference built FROM (repo@sha256:… when resolved at a registry), the image ID it was, and for a
        # bootstrapped base the hash of its recipe
        base, base_id = res.base.ref, res.base.image_id or None
        recipe = res.base.digest if res.base.kind == "bootstrap" else None
    rec = record_build(
        loaded,
        res.image,
        "docker",
        [(lr.name, lr.hash) for lr in res.layers],
        started=res.started,
        finished=iso_utc(),  # after verification: the record covers build and verify
        image_ref=res.pushed or res.ref,
        # a pushed image is named by its registry digest; a local one by its image ID, labelled as such
        image_digest=res.repo_digest or res.image_id,
        base=base,
        base_image_id=base_id,
        base_recipe=recipe,
        report=Path(res.verify_report) if res.verify_report else None,
        failure=failure,
        builders=builders,
        size_bytes=res.size or None,
        reporter=reporter,
    )
    res.manifest_id, res.manifest_path, res.manifest_passed = rec.id, str(rec.location), rec.passed
    if res.pushed and rec.passed and rec.store is not None:
        # where cosign and admission controllers look: the attestations beside the pushed image
        from imagekit.api.manifest import attach_stored

        done = attach_stored(rec.store, res.image, rec.id)
        res.attestations = done["reference"]
        reporter(Event("done", f"attestations at {done['reference']}", res.image, "", "docker"))
