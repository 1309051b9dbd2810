"""The ami target: layered AMIs with Packer amazon-ebs, root first, each from its parent's AMI.

`--rehearse` runs the same target against a local moto EC2 with sshd containers as instances (rehearsal.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imagekit.errors import BuildFailed, ImagekitError, UsageError
from imagekit.events import Event, Reporter
from imagekit.fsutil import atomic_write, owned_dir, wheel_files
from imagekit.names import DEFAULT_CA_BUNDLE
from imagekit.paths import log_dir, work_dir
from imagekit.plan import LayerPlan
from imagekit.render.packer import BUILD_DIR, MANIFEST_FILE, RehearsalRender, render_layer
from imagekit.render.scripts import render_scripts
from imagekit.runners import packer as pk
from imagekit.runners.aws import Aws
from imagekit.spec import LoadedSpec
from imagekit.targets.ami import rehearsal as reh
from imagekit.targets.ami.sizes import AmiSizes
from imagekit.targets.base import BuildOptions
from imagekit.targets.results import BaseResult, ImageResult, LayerResult
from imagekit.timefmt import iso_utc
from imagekit.verify.ec2_host import verify_on_ec2

TARGET = "ami"
REHEARSAL_ACCOUNT = "123456789012"  # moto's account


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


@contextlib.contextmanager
def open_ami(loaded: LoadedSpec, images: list[str], options: BuildOptions) -> Iterator[AmiTarget]:
    """The ami target for one build call: packer found, and for a rehearsal the local EC2 started (and stopped)."""
    info = pk.find_packer()
    rehearse, reporter = options.rehearse, options.reporter
    reporter(
        Event(
            "info",
            f"packer {info.version_text}"
            + (" (required_plugins + packer init)" if info.needs_plugins else " (amazon builder built in)")
            + (" — REHEARSAL: local moto EC2 and sshd containers, no AWS account is used" if rehearse else ""),
            target=TARGET,
        )
    )
    if not rehearse:
        yield AmiTarget(loaded, reporter, info=info, aws=Aws(), ec2=None)
        return
    log = log_dir() / "ami" / f"{loaded.spec.name}-rehearsal-{_stamp()}.log"
    aws_cfg = loaded.spec.aws
    ec2 = reh.RehearsalEc2(work_dir(loaded.root) / "rehearsal", aws_cfg.region, log, aws_cfg.ami_regions)
    # the stand-ins for the root layers' distribution AMIs must exist before moto starts (seeded ids)
    standins = {name: _standin(loaded, name, ec2, reporter) for name in images}
    try:
        ec2.start()
        yield AmiTarget(loaded, reporter, info=info, aws=ec2.aws, ec2=ec2, standins=standins)
    finally:
        with contextlib.suppress(ImagekitError):
            ec2.stop()


@dataclass
class AmiTarget:
    """The ami target of one build call (see imagekit.targets.Target); also the PackerHost verify runs on."""

    loaded: LoadedSpec
    reporter: Reporter
    info: pk.PackerInfo
    aws: Aws
    ec2: reh.RehearsalEc2 | None  # the rehearsal's local EC2, or None for AWS
    standins: dict[str, str] = field(default_factory=dict)  # image -> the rehearsal's stand-in root AMI
    name: str = TARGET
    builders: dict[str, str] = field(default_factory=dict)
    layer_builds: int = 0
    region: str = field(init=False)
    logs: Path = field(init=False)
    stamp: str = field(init=False)
    _source: dict[str, str] = field(init=False, default_factory=dict)  # image -> the AMI its root started from

    def __post_init__(self) -> None:
        self.region = self.loaded.spec.aws.region
        self.logs = log_dir() / "ami"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.stamp = _stamp()
        self.builders["packer"] = self.info.version_text

    @property
    def rehearsing(self) -> bool:
        """True when instances are rehearsal containers behind a local moto EC2."""
        return self.ec2 is not None

    def event(self, kind: Any, message: str, image: str = "", layer: str = "") -> None:
        """Report progress, marked when it is a rehearsal."""
        prefix = "[rehearsal] " if self.ec2 is not None else ""
        self.reporter(Event(kind, prefix + message, image, layer, TARGET))

    def folder(self, image: str) -> Path:
        """Where an image's templates, scripts and verification files are written."""
        work_dir(self.loaded.root)  # refuses a symlinked .imagekit
        return owned_dir(self.loaded.root, f".imagekit/ami/{image}")

    # --- the Target operations ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def prepare(self, image: str, res: ImageResult) -> Iterator[None]:
        """Write the provisioning scripts; note the AMI the root layer starts from."""
        provision = self.folder(image) / "provision"
        provision.mkdir(parents=True, exist_ok=True)
        for layer, text in sorted(render_scripts(self.loaded, image, TARGET).items()):
            atomic_write(provision / f"{layer}.sh", text, mode=0o755)
        source = self.standins.get(image) or self._source_ami(image)
        self._source[image] = source
        res.rehearsal = self.rehearsing
        if source:
            res.base = BaseResult("ami", f"{self.region}:{source}", source)
        yield

    def reuse(self, image: str, layer: str, digest: str) -> LayerResult | None:
        """The newest available AMI tagged with this layer hash (in a rehearsal, only while its image exists)."""
        ami = self.aws.find_layer(self.region, self.loaded.spec.name, layer, digest)
        if ami is None:
            return None
        if self.ec2 is not None and not reh.image_exists(reh.ami_image(ami.id)):
            self.event("warn", f"AMI {ami.id} has no rehearsal image; rebuilding {layer}", image, layer)
            return None
        # every region copy (aws.ami_regions) is part of the layer: reused and recorded all together, or the layer is
        # built again so Packer makes the missing copies; never a reused layer that silently lacks a region
        amis = {ami.region: ami.id}
        for region in sorted(set(self.loaded.spec.aws.ami_regions) - {self.region}):
            copy = self.aws.find_layer(region, self.loaded.spec.name, layer, digest)
            if copy is None:
                self.event("warn", f"AMI {ami.id} has no copy in {region}; rebuilding {layer} for every region", image,
                           layer)  # fmt: skip
                return None
            amis[region] = copy.id
        why = f"AMI {ami.id} has layer hash {digest[:12]}" + (f" (and its copies in {len(amis) - 1} regions)"
                                                              if len(amis) > 1 else "")  # fmt: skip
        return LayerResult(layer, digest, f"{ami.region}:{ami.id}", "reused", 0.0, ami.id, why, amis)

    def build_layer(self, image: str, lp: LayerPlan, done: list[LayerResult], *, force: bool) -> LayerResult:
        """One `packer build` from the parent's AMI (the root from the from.ami filter or the stand-in)."""
        parent_ami = done[-1].amis[self.region] if done else self.standins.get(image, "")
        parent_hash = done[-1].hash if done else None
        folder = self.folder(image)
        template = self._template(image, lp, parent_hash, folder)
        manifest = folder / MANIFEST_FILE
        manifest.unlink(missing_ok=True)
        log_path = self.logs / f"{self.loaded.spec.name}-{image}-{lp.name}-{self.stamp}.log"
        build_id = uuid.uuid4().hex[:12]
        extra_dir, extra_env = self._build_extras(folder)
        variables: dict[str, str | list[str]] = {
            "build_id": build_id,
            "parent_ami": parent_ami,
            "script_dir": str(folder / "provision"),
            "src_dir": str(self.loaded.root),
            "build_dir": str(extra_dir),
            "build_env": extra_env,
        }
        from_what = parent_ami or "the from.ami filter"
        self.event("start", f"packer build {lp.name} ({lp.hash[:12]}) from {from_what}", image, lp.name)
        name = f"imagekit-rehearsal-{self.loaded.spec.name}-{lp.name}-{build_id}"
        self.layer_builds += 1
        with self._booted(parent_ami, name) as booted:
            outcome = self.run_packer(image, lp.name, template, {**variables, **booted.variables}, log_path)
            if outcome.returncode != 0:
                raise _failed(image, lp.name, outcome)
            builds = [b for b in pk.read_manifest(manifest) if b.get("name") == lp.name]
            artifact_ids = [str(builds[-1].get("artifact_id", ""))] if builds else outcome.artifacts
            amis = pk.amis_of(artifact_ids)
            if self.region not in amis:
                raise BuildFailed(
                    f"packer finished but reported no AMI in {self.region} (artifacts: {artifact_ids})",
                    image=image,
                    layer=lp.name,
                    log_tail=outcome.tail[-20:],
                    log_path=str(log_path),
                )
            if self.ec2 is not None and booted.instance is not None:
                self.ec2.commit(booted.instance, list(amis.values()))
        self._tag_copies(amis)
        where = ", ".join(f"{r}:{a}" for r, a in sorted(amis.items()))
        self.event("done", f"{lp.name}: {where} in {outcome.seconds:.0f}s", image, lp.name)
        ami = amis[self.region]
        return LayerResult(
            lp.name, lp.hash, f"{self.region}:{ami}", "built", outcome.seconds, ami, lp.reason, amis, str(log_path)
        )

    def finish(self, image: str, res: ImageResult) -> None:
        """An AMI is finished when its leaf layer is: its ref reads `region:ami-…`, one tag per region copy."""
        leaf = res.layers[-1]
        res.amis = dict(leaf.amis) or {self.region: leaf.image_id}
        res.ref = f"{self.region}:{res.amis[self.region]}" + (" (rehearsal)" if self.rehearsing else "")
        res.tags = [f"{reg}:{ami}" for reg, ami in sorted(res.amis.items())]
        res.image_id = res.amis[self.region]
        res.log_path = leaf.log_path
        res.size = self.sizes().size(leaf.tag) or 0
        res.finished = iso_utc()

    def verify(self, image: str, res: ImageResult) -> str:
        """Boot the leaf AMI on verify.instance_type (a rehearsal container) and run vmcheck there."""
        return str(verify_on_ec2(self, self.loaded, image, res.amis[self.region], self.folder(image)))

    def record_facts(self, res: ImageResult) -> dict[str, Any]:
        """Every region copy of the leaf AMI (with its snapshots) is a subject of the record."""
        source = self._source.get(res.image, "")
        return {
            "amis": _ami_records(self.aws, res.amis, self._account()),
            "base": source or None,
            "builders": dict(self.builders),
            "rehearsal": self.rehearsing,
            "size_bytes": res.size or None,
        }

    def sizes(self) -> AmiSizes:
        """AMI sizes: the rehearsal image's size, or the snapshots' size on AWS."""
        return AmiSizes(self.aws, rehearsal=self.rehearsing)

    def layer_ref(self, layer: str, digest: str) -> str | None:
        """The AMI an earlier build made for this layer hash, while it exists."""
        ami = self.aws.find_layer(self.region, self.loaded.spec.name, layer, digest)
        return f"{ami.region}:{ami.id}" if ami is not None else None

    # --- packer and the instances -----------------------------------------------------------------------

    @contextlib.contextmanager
    def instance(self, source_ami: str, name: str) -> Iterator[dict[str, str]]:
        """Packer's connection variables for an instance booted from source_ami (see PackerHost)."""
        with self._booted(source_ami, name) as booted:
            yield booted.variables

    @contextlib.contextmanager
    def _booted(self, source_ami: str, name: str) -> Iterator[_Booted]:
        """Rehearsal: an sshd container booted from the source AMI's image, removed afterwards. AWS: nothing."""
        if self.ec2 is None:
            # standard AWS configuration: boto3 reads AWS_ENDPOINT_URL itself, Packer 1.6.6 needs it spelled out
            yield _Booted({"ec2_endpoint": _ec2_endpoint()})
            return
        inst = self.ec2.boot(source_ami, name)
        try:
            yield _Booted({"ssh_host": "127.0.0.1", "ssh_port": str(inst.port), "ec2_endpoint": self.ec2.url}, inst)
        finally:
            self.ec2.terminate(inst)

    def _packer_env(self) -> dict[str, str]:
        if self.ec2 is not None:
            return self.ec2.packer_env()
        return {"PACKER_NO_COLOR": "1"}

    def run_packer(
        self, image: str, layer: str, template: Path, variables: dict[str, str | list[str]], log_path: Path
    ) -> pk.BuildOutcome:
        """`packer init` (when plugins are needed) and `packer build`, progress as events."""

        def progress(kind: str, text: str) -> None:
            lines = text.strip().splitlines()
            if not lines or lines[0].startswith("-->"):
                return  # "--> build: AMIs were created: ..." repeats what the done event says
            text = lines[0]
            if kind == "say":
                self.event("step", text.removeprefix("==> ").split(": ", 1)[-1], image, layer)
            elif kind in ("message", "error"):
                # provisioning output: shown with -v, always in the log file
                self.event("log", text.split(": ", 1)[-1] if kind == "message" else text, image, layer)

        env = self._packer_env()
        pk.init(self.info, template, env=env, log_path=log_path)
        return pk.build(self.info, template, variables=variables, env=env, log_path=log_path, on_progress=progress)

    def _template(self, image: str, lp: LayerPlan, parent_hash: str | None, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        text = render_layer(
            self.loaded,
            image,
            lp.name,
            layer_hash=lp.hash,
            parent_hash=parent_hash,
            rehearsal=RehearsalRender() if self.ec2 is not None else None,
            required_plugins=self.info.needs_plugins,
        )
        path = folder / f"{lp.name}.pkr.hcl"
        atomic_write(path, text)
        return path

    def _build_extras(self, folder: Path) -> tuple[Path, list[str]]:
        """What pip gets for this build only: the spec's wheelhouse and CA bundle, uploaded then removed.

        A rehearsal's instances sit behind this machine's network, so they also get this machine's CA bundle.
        """
        extra = folder / "build-extra"
        if extra.is_symlink():
            extra.unlink()  # the link itself, never what it points at
        elif extra.exists():
            shutil.rmtree(extra)
        extra.mkdir(parents=True)
        env: list[str] = []
        build = self.loaded.spec.build
        if build.wheelhouse:
            configured = Path(build.wheelhouse)
            src = configured if configured.is_absolute() else self.loaded.local(build.wheelhouse)
            if src.is_dir():
                (extra / "wheels").mkdir()
                for whl in wheel_files(src)[0]:  # wheel files only, as the docker target stages them
                    _link_or_copy(whl, extra / "wheels" / whl.name)
                env.append(f"PIP_FIND_LINKS={BUILD_DIR}/wheels")
        ca = self.loaded.local(build.ca_bundle) if build.ca_bundle else None
        if ca is None and self.ec2 is not None and DEFAULT_CA_BUNDLE.exists():
            ca = DEFAULT_CA_BUNDLE
        if ca is not None and ca.is_file():
            shutil.copyfile(ca, extra / "ca.pem")
            env.append(f"PIP_CERT={BUILD_DIR}/ca.pem")
        if build.pip_index_url:
            env.append(f"PIP_INDEX_URL={build.pip_index_url}")
        return extra, env

    def _tag_copies(self, amis: Mapping[str, str]) -> None:
        # copy_image does not carry tags; the copies need them for reuse and gc in their regions.
        (primary,) = self.aws.describe_images(self.region, ids=[amis[self.region]]) or (None,)
        if primary is None:
            return
        copies = [a for r, i in amis.items() if r != self.region for a in self.aws.describe_images(r, ids=[i])]
        self.aws.copy_tags(primary, copies)

    def _source_ami(self, image: str) -> str:
        """What the root layer's from.ami filter selects now, recorded as the build's source AMI (drift compares it)."""
        root = self.loaded.chain(image)[0][1]
        flt = root.from_.ami if root.from_ else None
        if flt is None:
            return ""
        try:
            return self.aws.newest_ami(self.region, flt.name, flt.owners, flt.architecture) or ""
        except ImagekitError as exc:
            self.event("warn", f"could not resolve the source AMI filter {flt.name!r}: {exc}", image)
            return ""

    def _account(self) -> str:
        if self.ec2 is not None:
            return REHEARSAL_ACCOUNT
        return self.aws.account()


@dataclass
class _Booted:
    """Packer's connection variables for a booted instance, and the rehearsal container behind them (if any)."""

    variables: dict[str, str]
    instance: reh.Instance | None = None


def _ec2_endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_EC2") or os.environ.get("AWS_ENDPOINT_URL") or ""


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        dest.hardlink_to(src)
    except OSError:
        shutil.copyfile(src, dest)


def _failed(image: str, layer: str, outcome: pk.BuildOutcome) -> BuildFailed:
    line = pk.script_line(outcome.tail)
    reason = outcome.errors[-1].strip().splitlines()[-1] if outcome.errors else f"packer exited {outcome.returncode}"
    where = f" at line {line} of provision/{layer}.sh" if line else ""
    tail = [t for t in outcome.tail if t.strip()][-20:]
    return BuildFailed(
        f"provisioning failed{where}: {reason}", image=image, layer=layer, log_tail=tail, log_path=outcome.log_path
    )


def _ami_records(aws: Aws, amis: Mapping[str, str], account: str) -> list[dict[str, Any]]:
    out = []
    for region, ami_id in sorted(amis.items()):
        found = aws.describe_images(region, ids=[ami_id])
        snaps = list(found[0].snapshots) if found else []
        out.append({"id": ami_id, "region": region, "account": account, "snapshot_ids": snaps})
    return out


def _standin(loaded: LoadedSpec, image: str, ec2: reh.RehearsalEc2, reporter: Reporter) -> str:
    root_name, root = loaded.chain(image)[0]
    src = root.from_
    base = ""
    if src is not None and src.bootstrap is not None:
        from imagekit.runners.bootstrap import ensure_base
        from imagekit.runners.docker import DockerEngine

        base = ensure_base(DockerEngine(), root_name, src.bootstrap, reporter=reporter, image=image).tag
    elif src is not None and src.docker and reh.image_exists(src.docker):
        base = src.docker
    if not base:
        raise UsageError(
            f"a rehearsal starts layer {root_name!r} from a local image: give it from.bootstrap "
            "(or from.docker naming an image present in the Docker engine)"
        )
    return ec2.standin_ami(base, root_name)
