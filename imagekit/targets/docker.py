"""The docker target: BuildKit builds per layer, each tagged by its hash; the final image tagged (and pushed)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from imagekit.errors import BuildFailed, ImagekitError, Problem, SpecError, UsageError
from imagekit.events import Event, Reporter
from imagekit.fetch import fetch_model, stage
from imagekit.fsutil import atomic_write, owned_dir, wheel_files
from imagekit.inputs import clip
from imagekit.names import (
    DEFAULT_CA_BUNDLE,
    LABEL_PREFIX,
    MODELS_DIR,
    REBUILD_ARG,
    RENDER_DIR,
    SCRIPTS_PREFIX,
    WHEELHOUSE_DIR,
    image_tag,
    layer_tag,
)
from imagekit.paths import log_dir
from imagekit.plan import LayerPlan
from imagekit.render.dockerfile import parent_arg
from imagekit.spec import LoadedSpec
from imagekit.targets.base import BuildOptions
from imagekit.targets.docker_base import ensure_docker_base
from imagekit.targets.docker_push import push, push_compressed
from imagekit.targets.engines import VERIFY_RUNTIME, ImageEngine, open_engine
from imagekit.targets.results import ImageResult, LayerResult
from imagekit.timefmt import iso_utc
from imagekit.weights_tar import stage_weight_tars

if TYPE_CHECKING:
    from imagekit.nightly.budget import SizeSource
    from imagekit.release import Release

TARGET = "docker"
OCI = "org.opencontainers.image"
LOG_TAIL = 25


@contextlib.contextmanager
def open_docker(loaded: LoadedSpec, images: list[str], options: BuildOptions) -> Iterator[DockerTarget]:
    """The docker target for one build call: every remote model is fetched and checked before the engine is asked."""
    if options.push and len(images) > 1:
        raise UsageError(f"--push takes one image; pick it with --image ({', '.join(images)})")
    for name in images:
        _stage_models(loaded, name, options.reporter)
        stage_weight_tars(loaded, name)
    yield DockerTarget(loaded, options, options.engine or open_engine(options.engine_kind))


@dataclass
class _ImageState:
    log: IO[str]
    log_path: Path
    dockerfile: Path
    secrets: dict[str, Path]
    build_args: dict[str, str]


@dataclass
class DockerTarget:
    """The docker target of one build call (see imagekit.targets.Target)."""

    loaded: LoadedSpec
    options: BuildOptions
    engine: ImageEngine
    name: str = TARGET
    builders: dict[str, str] = field(default_factory=dict)
    layer_builds: int = 0
    _state: dict[str, _ImageState] = field(default_factory=dict)

    @property
    def reporter(self) -> Reporter:
        """Where progress goes."""
        return self.options.reporter

    @contextlib.contextmanager
    def prepare(self, image: str, res: ImageResult) -> Iterator[None]:
        """Open the image's log, make or resolve the root layer's base, render the Dockerfile and scripts."""
        loaded = self.loaded
        log_path = log_dir() / f"build-{loaded.spec.name}-{image}-docker-{time.strftime('%Y%m%dT%H%M%S')}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        res.log_path = str(log_path)
        self.reporter(Event("info", f"full log: {log_path}", image, "", TARGET))
        with log_path.open("a", encoding="utf-8") as log, _note_failure(log), _secrets(loaded) as secrets:
            log.write(f"# imagekit build {loaded.path} image={image} target=docker started={res.started}\n")
            root_name, _root_layer = loaded.chain(image)[0]
            # a refresh or drift of the root layer renews its base: debootstrapped again once per refresh period,
            # or pulled again
            res.base = ensure_docker_base(
                loaded, image, root_name, self.engine, renew=root_name in self.options.force_layers,
                now=self.options.now, reporter=self.reporter, log=log,
            )  # fmt: skip
            wheelhouse = _stage_wheelhouse(loaded, image, self.reporter)
            dockerfile = _render(loaded, image, wheelhouse)
            build_args = {"BASE_IMAGE": res.base.ref}
            release = self.options.release
            if release is not None:
                # the final stage's OCI labels; a leaf reused by its hash keeps those of the build that made it
                build_args |= {"IMAGEKIT_REVISION": release.revision, "IMAGEKIT_SOURCE": release.source}
            self._state[image] = _ImageState(log, log_path, dockerfile, secrets, build_args)
            try:
                yield
                log.write(f"# finished {res.finished} image={res.ref} id={res.image_id}\n")
            finally:
                del self._state[image]

    def reuse(self, image: str, layer: str, digest: str) -> LayerResult | None:
        """The layer's image when its hash tag exists in the engine."""
        tag = layer_tag(self.loaded.spec.name, layer, digest)
        info = self.engine.inspect(tag)
        if info is None:
            return None
        return LayerResult(layer, digest, tag, "reused", 0.0, info.id, f"image {tag} exists")

    def build_layer(self, image: str, lp: LayerPlan, done: list[LayerResult], *, force: bool) -> LayerResult:
        """`docker build --target <layer>`, every child starting from its parent's tagged image."""
        st = self._state[image]
        tags = {lr.name: lr.tag for lr in done}
        self.layer_builds += 1
        return _build_layer(
            self.loaded, image, lp, layer_tag(self.loaded.spec.name, lp.name, lp.hash), engine=self.engine,
            dockerfile=st.dockerfile, context=self.loaded.root,
            build_args={**st.build_args, **_parent_args(self.loaded, image, tags)}, secrets=st.secrets,
            force=force, log=st.log, log_path=st.log_path, reporter=self.reporter,
        )  # fmt: skip

    def _keep_replaced(self, final: str, repo: str, leaf: LayerResult) -> None:
        """A same-hash rebuild (--force, a refresh, a revoked layer rebuilt) moves the hash tag to the new image;
        the image it replaces may be a channel's head or rollback target, and untagged it is what `docker image
        prune` removes. It keeps a tag of its own: `<hash16>-replaced-<its id12>`."""
        old = self.engine.inspect(final)
        new = self.engine.inspect(leaf.tag)
        if old is None or new is None or old.id == new.id:
            return
        short = old.id.split(":", 1)[-1][:12]
        self.engine.tag(old.id, repo, f"{leaf.hash[:16]}-replaced-{short}")
        self.reporter(Event("info", f"kept the replaced image {short} as {repo}:{leaf.hash[:16]}-replaced-{short}"))

    def finish(self, image: str, res: ImageResult) -> None:
        """Tag the leaf as `<repository>:<leaf hash16>` and `:latest`; push when asked."""
        leaf = res.layers[-1]
        repo = self.loaded.spec.images[image].repository or image
        final = image_tag(repo, leaf.hash)
        self._keep_replaced(final, repo, leaf)
        self.engine.tag(leaf.tag, repo, leaf.hash[:16])
        self.engine.tag(leaf.tag, repo, "latest")
        res.ref, res.tags = final, [final, f"{repo}:latest"]
        release = self.options.release
        if release is not None and release.tags:
            final = self._release_image(image, leaf, repo, release)
            res.ref = final
            res.tags += [f"{repo}:{rtag}" for rtag in release.tags]
            res.release_tags = list(release.tags)
        info = self.engine.inspect(final)
        res.image_id = info.id if info else leaf.image_id
        res.size = info.size if info else 0
        if self.options.push:
            log = self._state[image].log
            if self.options.compression:
                res.repo_digest, res.pushed = push_compressed(
                    self.engine, final, self.options.push, self.options, image=image, reporter=self.reporter, log=log
                )
            else:
                res.repo_digest, res.pushed = push(
                    self.engine, final, self.options.push, image=image, reporter=self.reporter, log=log
                )
        res.finished = iso_utc()
        self.reporter(Event("done", f"{res.ref} ({_mb(res.size)}, {res.seconds:.0f}s)", image, "", TARGET))

    def _release_image(self, image: str, leaf: LayerResult, repo: str, release: Release) -> str:
        """The leaf with this release's OCI revision/source labels, tagged with the release tags.

        A leaf reused by its hash carries the labels of the build that made it; the release gets its own config
        (same layers, no new content) so what is tagged, verified and signed names this commit.
        """
        want = {f"{OCI}.revision": release.revision, f"{OCI}.source": release.source}
        refs = [f"{repo}:{rtag}" for rtag in release.tags]
        info = self.engine.inspect(leaf.tag)
        if info is not None and all(info.labels.get(k) == v for k, v in want.items()):
            for rtag in release.tags:
                self.engine.tag(leaf.tag, repo, rtag)
            return refs[0]
        st = self._state[image]
        with tempfile.TemporaryDirectory(prefix="imagekit-release-") as tmp:
            dockerfile = Path(tmp) / "Dockerfile"
            dockerfile.write_text("ARG LEAF\nFROM ${LEAF} AS release\n", encoding="utf-8")
            result = self.engine.build(
                Path(tmp), dockerfile=dockerfile, target="release", tags=refs, build_args={"LEAF": leaf.tag},
                labels=want, log=st.log,
            )  # fmt: skip
        if not result.ok:
            raise BuildFailed(
                f"tagging the release {', '.join(release.tags)} failed: {self.engine.kind} build exited "
                f"{result.returncode}",
                image=image,
                log_tail=result.tail[-LOG_TAIL:],
                log_path=str(st.log_path),
            )
        return refs[0]

    def verify(self, image: str, res: ImageResult) -> str:
        """Boot-and-verify where the engine keeps its images (DOCKER_HOST's engine, or podman): probe, pins,
        health, smoke."""
        from imagekit.verify.docker_host import verify_docker

        _report, path = verify_docker(
            self.loaded, res.ref, image=image, reporter=self.reporter, gpu=self.options.gpu,
            runtime=VERIFY_RUNTIME[self.engine.kind],
        )  # fmt: skip
        return str(path)

    def record_facts(self, res: ImageResult) -> dict[str, Any]:
        """A pushed image is named by its registry digest, a local one by its image ID (labelled as such)."""
        kind = self.engine.kind
        if kind not in self.builders:
            version = self.engine.version()  # a nicety in the record, never a reason to fail
            if version:
                self.builders[kind] = version
        base = base_id = recipe = None
        if res.base is not None:
            # the reference built FROM (repo@sha256:… when resolved at a registry), the image ID it was, and for
            # a bootstrapped base the hash of its recipe
            base, base_id = res.base.ref, res.base.image_id or None
            recipe = res.base.digest if res.base.kind == "bootstrap" else None
        return {
            "image_ref": res.pushed or res.ref,
            "image_digest": res.repo_digest or res.image_id,
            "base": base,
            "base_image_id": base_id,
            "base_recipe": recipe,
            "builders": dict(self.builders),
            "size_bytes": res.size or None,
            "tags": list(res.release_tags),
        }

    def sizes(self) -> SizeSource:
        """Image sizes and history rows from the engine."""
        return self.engine.sizes()

    def layer_ref(self, layer: str, digest: str) -> str | None:
        """The layer's hash tag (which may be gone; the gate then knows no previous size)."""
        return layer_tag(self.loaded.spec.name, layer, digest)


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def _parent_args(loaded: LoadedSpec, image: str, tags: dict[str, str]) -> dict[str, str]:
    # every child whose parent is already tagged starts from that image, never from the parent's stage
    return {
        parent_arg(name): tags[layer.parent]
        for name, layer in loaded.chain(image)
        if layer.parent is not None and layer.parent in tags
    }


def _build_layer(
    loaded: LoadedSpec,
    image: str,
    lp: LayerPlan,
    tag: str,
    *,
    engine: ImageEngine,
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
        step = engine.parse_step(line)
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
    if force:
        # every RUN again (a new value of the arg each stage declares), the package cache mounts kept: --no-cache
        # would empty those too, and --force, a refresh or a revoked layer would download every wheel again
        build_args = {**build_args, REBUILD_ARG: uuid.uuid4().hex}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imagekit-iid-") as tmp:
        iid = Path(tmp) / "iid"
        result = engine.build(
            context, dockerfile=dockerfile, target=lp.name, tags=[tag], build_args=build_args, labels=labels,
            secrets=secrets, iidfile=iid, log=log, on_line=on_line,
        )  # fmt: skip
        image_id = iid.read_text().strip() if iid.exists() else ""
    seconds = round(time.monotonic() - t0, 1)
    if not result.ok:
        tail = result.tail[-LOG_TAIL:]
        errors = [line for line in result.tail if engine.is_error_line(line)]
        why = errors[-1].strip() if errors else f"{engine.kind} build exited {result.returncode}"
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
    dest = owned_dir(loaded.root, WHEELHOUSE_DIR)
    wheels, skipped = wheel_files(src)
    wanted = {p.name: p for p in wheels}
    if skipped:
        shown = ", ".join(clip(n, 60) for n in skipped[:5])
        reporter(Event("info", f"wheelhouse {src}: not wheel files, left out: {shown}", image, "", "docker"))
    for old in dest.iterdir():
        if old.name not in wanted:
            if old.is_dir() and not old.is_symlink():
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
            stage(cached, owned_dir(loaded.root, MODELS_DIR) / model.sha256)


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
