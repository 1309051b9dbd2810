"""`imagekit build --target ami`: layered AMIs with Packer, root first, each from its parent; verify; record."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from imagekit.ami import rehearsal as reh
from imagekit.errors import BuildFailed, ImagekitError, UsageError, VerifyFailed
from imagekit.events import Event, Reporter, silent
from imagekit.fsutil import atomic_write
from imagekit.names import service_unit_path
from imagekit.paths import log_dir, work_dir
from imagekit.plan import LayerPlan, plan_image
from imagekit.render.packer import BUILD_DIR, MANIFEST_FILE, STOP_EXIT, Rehearsal, render_layer, render_verify
from imagekit.runners import packer as pk
from imagekit.runners.aws import Ami, Aws
from imagekit.spec import LoadedSpec

if TYPE_CHECKING:
    from imagekit.api.build import BuildResult

TARGET: Literal["ami"] = "ami"
REHEARSAL_ACCOUNT = "123456789012"  # moto's account
DEFAULT_CA = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass
class LayerResult:
    """One layer of an AMI chain: built now or reused, and its AMI per region."""

    name: str
    hash: str
    status: str  # "built" | "reused"
    amis: dict[str, str]
    seconds: float = 0.0
    log_path: str = ""


@dataclass
class ImageResult:
    """One image's AMI chain, its verification and its manifest."""

    image: str
    layers: list[LayerResult] = field(default_factory=list)
    verified: bool | None = None
    failures: list[str] = field(default_factory=list)
    report_path: str = ""
    manifest: str = ""
    seconds: float = 0.0

    @property
    def leaf_amis(self) -> dict[str, str]:
        """The leaf layer's AMI per region."""
        return self.layers[-1].amis if self.layers else {}

    @property
    def built_layers(self) -> list[str]:
        """Names of the layers this run built (each one `packer build`)."""
        return [lr.name for lr in self.layers if lr.status == "built"]


@dataclass
class AmiBuildResult:
    """Everything an AMI build did."""

    images: list[ImageResult]
    rehearsal: bool
    packer_version: str
    packer_builds: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "target": TARGET,
            "rehearsal": self.rehearsal,
            "packer": self.packer_version,
            "packer_builds": self.packer_builds,
            "images": [
                {
                    "name": r.image,
                    "layers": [
                        {"name": lr.name, "hash": lr.hash, "status": lr.status, "amis": lr.amis} for lr in r.layers
                    ],
                    "verified": r.verified,
                    "failures": r.failures,
                    "report": r.report_path,
                    "manifest": r.manifest,
                }
                for r in self.images
            ],
        }


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class _Builder:
    """State of one `build_ami` call: packer, AWS (or the rehearsal), folders, the reporter."""

    def __init__(
        self,
        loaded: LoadedSpec,
        reporter: Reporter,
        *,
        info: pk.PackerInfo,
        aws: Aws,
        rehearsal: reh.Rehearsal | None,
        scripts: Mapping[str, Mapping[str, str]] | None,
    ) -> None:
        self.loaded = loaded
        self.reporter = reporter
        self.info = info
        self.aws = aws
        self.rehearsal = rehearsal
        self.scripts = scripts
        self.region = loaded.spec.aws.region
        self.packer_builds = 0
        self.logs = log_dir() / "ami"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.stamp = _stamp()

    def event(self, kind: Any, message: str, image: str = "", layer: str = "") -> None:
        prefix = "[rehearsal] " if self.rehearsal is not None else ""
        self.reporter(Event(kind, prefix + message, image, layer, TARGET))

    # --- rendering ------------------------------------------------------------------------------------

    def _scripts(self, image: str) -> Mapping[str, str]:
        if self.scripts is not None:
            return self.scripts[image]
        # the render helper's module: the same provisioning scripts as the Dockerfile's RUN steps
        try:
            mod: Any = importlib.import_module("imagekit.render.scripts")
        except ModuleNotFoundError:
            raise BuildFailed("the provisioning script renderer (imagekit.render.scripts) is not installed") from None
        return dict(mod.render_scripts(self.loaded, image, TARGET))

    def _template(self, image: str, lp: LayerPlan, parent_hash: str | None, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        text = render_layer(
            self.loaded,
            image,
            lp.name,
            layer_hash=lp.hash,
            parent_hash=parent_hash,
            rehearsal=Rehearsal() if self.rehearsal is not None else None,
            required_plugins=self.info.needs_plugins,
        )
        path = folder / f"{lp.name}.pkr.hcl"
        atomic_write(path, text)
        return path

    # --- one layer ------------------------------------------------------------------------------------

    def reuse(self, image: str, lp: LayerPlan) -> Ami | None:
        ami = self.aws.find_layer(self.region, self.loaded.spec.name, lp.name, lp.hash)
        if ami is None:
            return None
        if self.rehearsal is not None and not reh.image_exists(reh.ami_image(ami.id)):
            self.event("warn", f"AMI {ami.id} has no rehearsal image; rebuilding {lp.name}", image, lp.name)
            return None
        return ami

    @contextlib.contextmanager
    def instance(self, source_ami: str, name: str) -> Iterator[dict[str, str]]:
        """Rehearsal: an sshd container booted from the source AMI's image, removed afterwards. AWS: nothing."""
        if self.rehearsal is None:
            # standard AWS configuration: boto3 reads AWS_ENDPOINT_URL itself, Packer 1.6.6 needs it spelled out
            endpoint = os.environ.get("AWS_ENDPOINT_URL_EC2") or os.environ.get("AWS_ENDPOINT_URL") or ""
            yield {"ec2_endpoint": endpoint}
            return
        inst = self.rehearsal.boot(source_ami, name)
        try:
            yield {
                "ssh_host": "127.0.0.1",
                "ssh_port": str(inst.port),
                "ec2_endpoint": self.rehearsal.url,
                "_c": inst.container,
            }
        finally:
            self.rehearsal.terminate(inst)

    def packer_env(self) -> dict[str, str]:
        if self.rehearsal is not None:
            return self.rehearsal.packer_env()
        return {"PACKER_NO_COLOR": "1"}

    def run_packer(
        self, image: str, layer: str, template: Path, variables: dict[str, str], log_path: Path
    ) -> pk.BuildOutcome:
        def progress(kind: str, text: str) -> None:
            lines = text.strip().splitlines()
            if not lines or lines[0].startswith("-->"):
                return  # "--> build: AMIs were created: ..." repeats what the done event says
            text = lines[0]
            if kind == "say":
                self.event("step", text.removeprefix("==> ").split(": ", 1)[-1], image, layer)
            elif kind == "message":
                # provisioning output: shown with -v, always in the log file
                self.event("log", text.split(": ", 1)[-1], image, layer)
            elif kind == "error":
                self.event("log", text, image, layer)

        pk.init(self.info, template, env=self.packer_env(), log_path=log_path)
        self.packer_builds += 1
        return pk.build(
            self.info,
            template,
            variables={k: v for k, v in variables.items() if not k.startswith("_")},
            env=self.packer_env(),
            log_path=log_path,
            on_progress=progress,
        )

    def build_layer(
        self, image: str, lp: LayerPlan, parent_hash: str | None, parent_ami: str, folder: Path
    ) -> LayerResult:
        template = self._template(image, lp, parent_hash, folder)
        manifest = folder / MANIFEST_FILE
        manifest.unlink(missing_ok=True)
        log_path = self.logs / f"{self.loaded.spec.name}-{image}-{lp.name}-{self.stamp}.log"
        build_id = uuid.uuid4().hex[:12]
        extra_dir, extra_env = self.build_extras(folder)
        variables = {
            "build_id": build_id,
            "parent_ami": parent_ami,
            "script_dir": str(folder / "provision"),
            "src_dir": str(self.loaded.root),
            "build_dir": str(extra_dir),
            "build_env": json.dumps(extra_env),
        }
        self.event(
            "start",
            f"packer build {lp.name} ({lp.hash[:12]}) from {parent_ami or 'the from.ami filter'}",
            image,
            lp.name,
        )
        name = f"imagekit-rehearsal-{self.loaded.spec.name}-{lp.name}-{build_id}"
        with self.instance(parent_ami, name) as conn:
            outcome = self.run_packer(image, lp.name, template, {**variables, **conn}, log_path)
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
            if self.rehearsal is not None:
                self.rehearsal.commit(reh.Instance(conn["_c"], int(conn["ssh_port"])), list(amis.values()))
        self._tag_copies(amis)
        self.event(
            "done",
            f"{lp.name}: {', '.join(f'{r}:{a}' for r, a in sorted(amis.items()))} in {outcome.seconds:.0f}s",
            image,
            lp.name,
        )
        return LayerResult(lp.name, lp.hash, "built", amis, outcome.seconds, str(log_path))

    def build_extras(self, folder: Path) -> tuple[Path, list[str]]:
        """What pip gets for this build only: the spec's wheelhouse and CA bundle, uploaded then removed.

        A rehearsal's instances sit behind this machine's network, so they also get this machine's CA bundle.
        """
        extra = folder / "build-extra"
        if extra.exists():
            shutil.rmtree(extra)
        extra.mkdir(parents=True)
        env: list[str] = []
        build = self.loaded.spec.build
        if build.wheelhouse:
            src = (
                self.loaded.local(build.wheelhouse)
                if not Path(build.wheelhouse).is_absolute()
                else Path(build.wheelhouse)
            )
            if src.is_dir():
                (extra / "wheels").mkdir()
                for whl in sorted(src.iterdir()):
                    if whl.is_file():
                        _link_or_copy(whl, extra / "wheels" / whl.name)
                env.append(f"PIP_FIND_LINKS={BUILD_DIR}/wheels")
        ca = self.loaded.local(build.ca_bundle) if build.ca_bundle else None
        if ca is None and self.rehearsal is not None and DEFAULT_CA.exists():
            ca = DEFAULT_CA
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

    # --- verification ---------------------------------------------------------------------------------

    def verify(self, image: str, leaf_ami: str, folder: Path) -> tuple[dict[str, Any] | None, list[str], Path]:
        vdir = folder / "verify"
        files = vdir / "files"
        shutil.rmtree(files, ignore_errors=True)
        files.mkdir(parents=True)
        shutil.copyfile(Path(__file__).with_name("vmcheck.py"), files / "vmcheck.py")
        probe = Path(__file__).parent.parent / "verify" / "probe.py"
        if probe.exists():
            shutil.copyfile(probe, files / "probe.py")
        atomic_write(
            files / "check.json", json.dumps(check_config(self.loaded, image), indent=2, sort_keys=True) + "\n"
        )
        template = vdir / "verify.pkr.hcl"
        atomic_write(
            template,
            render_verify(
                self.loaded,
                image,
                rehearsal=Rehearsal() if self.rehearsal is not None else None,
                required_plugins=self.info.needs_plugins,
            ),
        )
        report_path = vdir / "report.json"
        report_path.unlink(missing_ok=True)
        log_path = self.logs / f"{self.loaded.spec.name}-{image}-verify-{self.stamp}.log"
        build_id = uuid.uuid4().hex[:12]
        variables = {
            "ami_id": leaf_ami,
            "build_id": build_id,
            "verify_dir": str(files),
            "report_path": str(report_path),
        }
        itype = self.loaded.verify_for(image).instance_type or self.loaded.spec.aws.instance_type
        started = datetime.now(timezone.utc)
        self.event("start", f"boot-and-verify {leaf_ami} on {itype}", image)
        name = f"imagekit-rehearsal-{self.loaded.spec.name}-verify-{build_id}"
        with self.instance(leaf_ami, name) as conn:
            outcome = self.run_packer(image, "verify", template, {**variables, **conn}, log_path)
        self.packer_builds -= 1  # verification is not a layer build
        stopped = any(f"exit status: {STOP_EXIT}" in e for e in outcome.errors)
        if (outcome.returncode != 0 and not stopped) or not report_path.exists():
            tail = " | ".join(outcome.tail[-5:])
            return None, [f"verification run failed (exit {outcome.returncode}): {tail}; log {log_path}"], report_path
        raw = json.loads(report_path.read_text(encoding="utf-8"))
        host = f"rehearsal container ({itype})" if self.rehearsal is not None else f"ec2 {itype}"
        report = vm_report(
            raw, self.loaded, image, image_ref=f"aws:{self.region}:{leaf_ami}", host=host, started=started
        )
        report.seconds = round((datetime.now(timezone.utc) - started).total_seconds(), 3)
        report.write(report_path)
        return report.model_dump(mode="json", by_alias=True), list(report.failures), report_path


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        dest.hardlink_to(src)
    except OSError:
        shutil.copyfile(src, dest)


def check_config(loaded: LoadedSpec, image: str) -> dict[str, Any]:
    """What vmcheck.py on the instance starts, waits for, requests: from the resolved chain and verify policy."""
    res = loaded.resolved(image)
    verify = loaded.verify_for(image)
    try:
        venv = str(importlib.import_module("imagekit.render.scripts").VENV)
    except (ImportError, AttributeError):
        venv = "/opt/venv"
    env = dict(res.env)
    # the provisioning scripts put the service's Python in a virtualenv; its bin comes first, as in the image
    env.setdefault("PATH", f"{venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    out: dict[str, Any] = {
        "command": list(res.command) if res.command else None,
        "user": res.user,
        "workdir": res.workdir,
        "port": res.port,
        "env": dict(sorted(env.items())),
        "gpu": verify.gpu,
        "models": [m.dest for _, layer in loaded.chain(image) for m in layer.models],
        # the systemd unit the leaf's template installs (render.scripts.render_service_install); vmcheck reports it
        "unit": service_unit_path(image) if res.command else None,
    }
    if verify.health:
        out["health"] = verify.health.model_dump()
    if verify.smoke:
        out["smoke"] = verify.smoke.model_dump(by_alias=True)
    return out


def vm_report(
    raw: Mapping[str, Any], loaded: LoadedSpec, image: str, *, image_ref: str, host: str, started: datetime
) -> Any:
    """The facts vmcheck.py gathered on the instance as the verify package's Report, with the same pin and policy
    comparison as the docker target (the driver through nvidia-smi too, as target="ami")."""
    from imagekit.verify.report import (
        HealthResult,
        Report,
        SmokeResult,
        check_service_unit,
        compare,
        compare_wav,
        gpu_visible,
    )

    policy = loaded.verify_for(image)
    report = Report(
        spec=str(loaded.path),
        image=image,
        image_ref=image_ref,
        target=TARGET,
        host=host,
        started_at=started.isoformat(),
        finished_at=datetime.now(timezone.utc).isoformat(),
        gpu_policy=policy.gpu,
    )
    report.failures += [str(f) for f in raw.get("failures", [])]
    unit = raw.get("service_unit")
    report.service_unit = dict(unit) if isinstance(unit, Mapping) else None
    report.failures += check_service_unit(report.service_unit, loaded, image, target=TARGET)
    probe = raw.get("probe")
    if isinstance(probe, dict):
        report.probe = probe
        report.gpu_visible = gpu_visible(probe)
        report.failures += compare(probe, loaded, image, target=TARGET)
    health = raw.get("health")
    if policy.health and isinstance(health, dict):
        report.health = HealthResult.model_validate(health)
        if not report.health.ready:
            report.failures.append(
                f"health: {policy.health.path} did not answer 200 within {policy.health.timeout:g}s "
                f"(last: {report.health.last_status or 'no answer'} {report.health.last_body[:300]})"
            )
    elif policy.health:
        report.failures.append("health: no result came back from the instance (does the image set `port`?)")
    smoke = raw.get("smoke")
    sm = policy.smoke
    if sm is not None and isinstance(smoke, dict):
        body = base64.b64decode(smoke.get("body_b64", ""))
        fields = {k: v for k, v in smoke.items() if k != "body_b64"}
        fields["sha256"] = hashlib.sha256(body).hexdigest() if body else ""
        result = SmokeResult.model_validate(fields)
        report.smoke = result
        exp = sm.expect
        if result.error:
            report.failures.append(f"smoke {sm.method} {sm.path}: no response: {result.error}")
        else:
            if result.status != exp.status:
                snippet = body[:200].decode("utf-8", "replace")
                report.failures.append(f"smoke status: expected {exp.status}, found {result.status} ({snippet})")
            if result.bytes < exp.min_bytes:
                report.failures.append(
                    f"smoke response too short: expected at least {exp.min_bytes} bytes, found {result.bytes}"
                )
            if exp.content_type and result.content_type.split(";", 1)[0].strip() != exp.content_type:
                report.failures.append(
                    f"smoke content type: expected {exp.content_type}, found {result.content_type or 'none'}"
                )
            if exp.max_latency_ms is not None and (result.latency_ms or 0) > exp.max_latency_ms:
                report.failures.append(
                    f"smoke latency: expected at most {exp.max_latency_ms:g} ms, found {result.latency_ms} ms"
                )
            if exp.reference and result.status == exp.status:
                try:
                    ref = loaded.local(exp.reference).read_bytes()
                except OSError as exc:
                    report.failures.append(f"smoke reference {exp.reference}: cannot read: {exc.strerror}")
                else:
                    audio_failures, metrics = compare_wav(body, ref, exp.tolerance)
                    metrics["reference"] = exp.reference
                    result.audio = metrics
                    report.failures += audio_failures
    elif sm is not None and report.health is not None and report.health.ready:
        report.failures.append(f"smoke {sm.method} {sm.path}: no result came back from the instance")
    report.ok = not report.failures
    return report


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


def _account(aws: Aws, rehearsal: bool) -> str:
    if rehearsal:
        return REHEARSAL_ACCOUNT
    try:
        import boto3

        return str(boto3.client("sts").get_caller_identity()["Account"])
    except Exception:  # the account is informative in the record; a build does not fail for it
        return ""


def build_ami(
    loaded: LoadedSpec,
    images: Sequence[str] | None = None,
    force: bool = False,
    reporter: Reporter = silent,
    rehearse: bool = False,
    *,
    verify: bool = True,
    record: bool = True,
    aws: Aws | None = None,
    packer: pk.PackerInfo | None = None,
    scripts: Mapping[str, Mapping[str, str]] | None = None,
) -> AmiBuildResult:
    """Build each image's AMI chain root first (reusing layers whose AMI exists with the same hash), verify, record."""
    names = list(images) if images else [n for n, i in loaded.spec.images.items() if TARGET in i.targets]
    for name in names:
        if name not in loaded.spec.images:
            raise UsageError(f"unknown image {name!r}; images: {', '.join(loaded.spec.images)}")
        if TARGET not in loaded.spec.images[name].targets:
            raise UsageError(f"image {name!r} does not list the ami target (images.{name}.targets)")
    info = packer or pk.find_packer()
    reporter(
        Event(
            "info",
            f"packer {info.version_text}"
            + (" (required_plugins + packer init)" if info.needs_plugins else " (amazon builder built in)")
            + (" — REHEARSAL: local moto EC2 and sshd containers, no AWS account is used" if rehearse else ""),
            target=TARGET,
        )
    )
    root = work_dir(loaded.root)
    if rehearse:
        region = loaded.spec.aws.region
        log = log_dir() / "ami" / f"{loaded.spec.name}-rehearsal-{_stamp()}.log"
        r = reh.Rehearsal(root / "rehearsal", region, log, loaded.spec.aws.ami_regions)
        # the stand-ins for the root layers' distribution AMIs must exist before moto starts (seeded ids)
        standins = {name: _standin(loaded, name, r, reporter) for name in names}
        try:
            r.start()
            b = _Builder(loaded, reporter, info=info, aws=r.aws, rehearsal=r, scripts=scripts)
            results = [
                _build_image(b, name, force=force, verify=verify, record=record, standin=standins[name])
                for name in names
            ]
        finally:
            with contextlib.suppress(ImagekitError):
                r.stop()
        return AmiBuildResult(results, True, info.version_text, b.packer_builds)
    b = _Builder(loaded, reporter, info=info, aws=aws or Aws(), rehearsal=None, scripts=scripts)
    results = [
        _build_image(b, name, force=force, verify=verify, record=record, standin="", source=_source_ami(b, name))
        for name in names
    ]
    return AmiBuildResult(results, False, info.version_text, b.packer_builds)


def _standin(loaded: LoadedSpec, image: str, r: reh.Rehearsal, reporter: Reporter) -> str:
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
    return r.standin_ami(base, root_name)


def _source_ami(b: _Builder, image: str) -> str:
    """What the root layer's from.ami filter selects now, recorded as the build's source AMI (drift compares it)."""
    root = b.loaded.chain(image)[0][1]
    flt = root.from_.ami if root.from_ else None
    if flt is None:
        return ""
    try:
        return b.aws.newest_ami(b.region, flt.name, flt.owners, flt.architecture) or ""
    except ImagekitError as exc:
        b.event("warn", f"could not resolve the source AMI filter {flt.name!r}: {exc}", image)
        return ""


def _build_image(
    b: _Builder, image: str, *, force: bool, verify: bool, record: bool, standin: str, source: str = ""
) -> ImageResult:
    started = datetime.now(timezone.utc)
    plan = plan_image(b.loaded, image, TARGET)
    folder = work_dir(b.loaded.root) / "ami" / image
    provision = folder / "provision"
    provision.mkdir(parents=True, exist_ok=True)
    for layer, text in sorted(b._scripts(image).items()):
        atomic_write(provision / f"{layer}.sh", text, mode=0o755)
    result = ImageResult(image)
    parent_ami, parent_hash = standin, None
    built_any = False
    for lp in plan.layers:
        existing = None if force else b.reuse(image, lp)
        if existing is not None:
            amis = {existing.region: existing.id}
            b.event("cached", f"{lp.name}: AMI {existing.id} has layer hash {lp.hash[:12]}", image, lp.name)
            result.layers.append(LayerResult(lp.name, lp.hash, "reused", amis))
        else:
            result.layers.append(b.build_layer(image, lp, parent_hash, parent_ami, folder))
            built_any = True
        parent_ami, parent_hash = result.layers[-1].amis[b.region], lp.hash
    leaf = result.leaf_amis[b.region]
    report: dict[str, Any] | None = None
    if verify and (built_any or force):
        report, failures, report_path = b.verify(image, leaf, folder)
        result.verified, result.failures, result.report_path = not failures, failures, str(report_path)
        b.event("done" if not failures else "fail", f"verification {'passed' if not failures else 'FAILED'}", image)
    if record and (built_any or force):
        from imagekit.manifest.record import record_build

        rec = record_build(
            b.loaded,
            image,
            TARGET,
            plan.layers,
            started=started,
            finished=datetime.now(timezone.utc),
            amis=_ami_records(b.aws, result.leaf_amis, _account(b.aws, b.rehearsal is not None)),
            base=standin or source or None,
            report=report,
            failure="; ".join(result.failures) if result.failures else (None if verify else "not verified"),
            builders={"packer": b.info.version_text},
            rehearsal=b.rehearsal is not None,
            reporter=b.reporter,
        )
        result.manifest = rec.id
    result.seconds = (datetime.now(timezone.utc) - started).total_seconds()
    if result.verified is False:
        raise VerifyFailed(
            f"{image}: AMI {leaf} failed boot-and-verify", failures=result.failures, report_path=result.report_path
        )
    return result


def as_build_result(loaded: LoadedSpec, result: AmiBuildResult) -> BuildResult:
    """The AMI build as api.build's BuildResult (what `imagekit build` prints); AMI refs read `region:ami-…`."""
    from imagekit.api import build as api

    out = api.BuildResult(spec=str(loaded.path), target=TARGET)
    region = loaded.spec.aws.region
    for r in result.images:
        layers = [
            api.LayerResult(
                name=lr.name,
                hash=lr.hash,
                tag=f"{region}:{lr.amis.get(region, '')}",
                status="built" if lr.status == "built" else "reused",
                seconds=lr.seconds,
                reason="rehearsal" if result.rehearsal else "",
            )
            for lr in r.layers
        ]
        leaf = r.leaf_amis
        out.images.append(
            api.ImageResult(
                image=r.image,
                target=TARGET,
                layers=layers,
                ref=f"{region}:{leaf.get(region, '')}" + (" (rehearsal)" if result.rehearsal else ""),
                tags=[f"{reg}:{ami}" for reg, ami in sorted(leaf.items())],
                verify_report=r.report_path,
                manifest_id=r.manifest,
                manifest_passed=r.verified,
                log_path=r.layers[-1].log_path if r.layers else "",
                seconds=r.seconds,
            )
        )
    return out
