"""Boot-and-verify on an EC2 instance (or a rehearsal container) booted from the new leaf AMI.

vmcheck.py runs on the instance (with probe.py beside it) and writes what it found; the judging happens here,
with the same pin comparison and the same health and smoke checks as the docker host.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from imagekit.errors import UsageError, VerifyFailed
from imagekit.fsutil import atomic_write
from imagekit.inputs import clip, load_json, read_regular
from imagekit.names import VENV, prewarm_paths, service_unit_path
from imagekit.render.packer import STOP_EXIT, RehearsalRender, render_verify
from imagekit.runners import packer as pk
from imagekit.spec import LoadedSpec
from imagekit.verify.probe_input import MAX_PROBE_BYTES, MAX_PROBE_DEPTH, ProbeInputError, parse_probe
from imagekit.verify.report import (
    HealthResult,
    Report,
    SmokeResult,
    check_health,
    check_service_unit,
    check_smoke,
    gpu_visible,
    judged,
)

PAYLOAD = Path(__file__).resolve().parent  # vmcheck.py and probe.py: what runs on the instance
TARGET = "ami"


class PackerHost(Protocol):
    """What the verification run needs from the AMI target: packer, the instance (or its stand-in), logs."""

    info: pk.PackerInfo
    region: str
    logs: Path
    stamp: str

    @property
    def rehearsing(self) -> bool:
        """True when instances are rehearsal containers behind a local moto EC2."""
        ...

    def instance(self, source_ami: str, name: str) -> contextlib.AbstractContextManager[dict[str, str]]:
        """An instance booted from source_ami for as long as the block runs; yields Packer's connection variables."""
        ...

    def run_packer(
        self, image: str, layer: str, template: Path, variables: dict[str, str | list[str]], log_path: Path
    ) -> pk.BuildOutcome:
        """`packer build` of one template, progress reported."""
        ...

    def event(self, kind: Any, message: str, image: str = "", layer: str = "") -> None:
        """Report progress."""
        ...


def verify_on_ec2(host: PackerHost, loaded: LoadedSpec, image: str, leaf_ami: str, folder: Path) -> Path:
    """Boot the leaf AMI, run vmcheck.py there, judge what it found; the report's path. Raises VerifyFailed."""
    vdir = folder / "verify"
    files = vdir / "files"
    shutil.rmtree(files, ignore_errors=True)
    files.mkdir(parents=True)
    shutil.copyfile(PAYLOAD / "vmcheck.py", files / "vmcheck.py")
    shutil.copyfile(PAYLOAD / "probe.py", files / "probe.py")
    atomic_write(files / "check.json", json.dumps(check_config(loaded, image), indent=2, sort_keys=True) + "\n")
    template = vdir / "verify.pkr.hcl"
    render = RehearsalRender() if host.rehearsing else None
    atomic_write(template, render_verify(loaded, image, rehearsal=render, required_plugins=host.info.needs_plugins))
    report_path = vdir / "report.json"
    report_path.unlink(missing_ok=True)
    log_path = host.logs / f"{loaded.spec.name}-{image}-verify-{host.stamp}.log"
    build_id = uuid.uuid4().hex[:12]
    variables = {"ami_id": leaf_ami, "build_id": build_id, "verify_dir": str(files), "report_path": str(report_path)}
    itype = loaded.verify_for(image).instance_type or loaded.spec.aws.instance_type
    started = datetime.now(timezone.utc)
    host.event("start", f"boot-and-verify {leaf_ami} on {itype}", image)
    name = f"imagekit-rehearsal-{loaded.spec.name}-verify-{build_id}"
    with host.instance(leaf_ami, name) as conn:
        outcome = host.run_packer(image, "verify", template, {**variables, **conn}, log_path)
    stopped = any(f"exit status: {STOP_EXIT}" in e for e in outcome.errors)
    failed = f"{image}: AMI {leaf_ami} failed boot-and-verify"
    if (outcome.returncode != 0 and not stopped) or not report_path.exists():
        tail = " | ".join(outcome.tail[-5:])
        host.event("fail", "verification FAILED", image)
        why = f"verification run failed (exit {outcome.returncode}): {tail}; log {log_path}"
        raise VerifyFailed(failed, failures=[why])  # no report: nothing came back to judge
    try:  # what the instance wrote is the image's word: bounded and parsed like a probe
        raw = load_json(read_regular(report_path, what="instance report", limit=2 * MAX_PROBE_BYTES),
                        limit=2 * MAX_PROBE_BYTES, max_depth=MAX_PROBE_DEPTH + 2)  # fmt: skip
    except (ValueError, UsageError) as exc:
        raise VerifyFailed(failed, failures=[f"the instance's report cannot be read: {clip(str(exc), 300)}"]) from None
    if not isinstance(raw, dict):
        raise VerifyFailed(failed, failures=["the instance's report is not a JSON object"])
    where = f"rehearsal container ({itype})" if host.rehearsing else f"ec2 {itype}"
    report = vm_report(raw, loaded, image, image_ref=f"aws:{host.region}:{leaf_ami}", host=where, started=started)
    report.seconds = round((datetime.now(timezone.utc) - started).total_seconds(), 3)
    report.write(report_path)
    host.event("done" if report.ok else "fail", f"verification {'passed' if report.ok else 'FAILED'}", image)
    if not report.ok:
        raise VerifyFailed(failed, failures=list(report.failures), report_path=str(report_path))
    return report_path


def check_config(loaded: LoadedSpec, image: str) -> dict[str, Any]:
    """What vmcheck.py on the instance starts, waits for, requests: from the resolved chain and verify policy."""
    res = loaded.resolved(image)
    verify = loaded.verify_for(image)
    env = dict(res.env)
    # the provisioning scripts put the service's Python in a virtualenv; its bin comes first, as in the image
    env.setdefault("PATH", f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    out: dict[str, Any] = {
        "command": list(res.command) if res.command else None,
        "user": res.user,
        "workdir": res.workdir,
        "port": res.port,
        "env": dict(sorted(env.items())),
        "gpu": verify.gpu,
        "models": [m.dest for _, layer in loaded.chain(image) for m in layer.models],
        # the systemd unit the leaf's template installs (render.service_unit.render_service_install); vmcheck reports it
        "unit": service_unit_path(image) if res.command else None,
    }
    if loaded.spec.aws.prewarm and res.command:
        script, result = prewarm_paths(image)
        out["prewarm"] = {"script": script, "result": result}
    if verify.health:
        out["health"] = verify.health.model_dump()
    if verify.smoke:
        out["smoke"] = verify.smoke.model_dump(by_alias=True)
    return out


def vm_report(
    raw: Mapping[str, Any], loaded: LoadedSpec, image: str, *, image_ref: str, host: str, started: datetime
) -> Report:
    """The facts vmcheck.py gathered on the instance as a Report, judged as on the docker host (pins, health,
    smoke), plus what only an AMI has: its systemd unit and the NVIDIA driver (target="ami")."""
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
    prewarm = raw.get("prewarm")
    if loaded.spec.aws.prewarm:
        if isinstance(prewarm, Mapping) and isinstance(prewarm.get("seconds"), int | float):
            report.prewarm = {k: prewarm[k] for k in ("seconds", "files", "bytes", "by") if k in prewarm}
        else:
            report.failures.append("prewarm: aws.prewarm is on but no pre-read result came back from the instance")
    probe = raw.get("probe")
    if isinstance(probe, dict):
        try:
            probe, problems = parse_probe(json.dumps(probe, ensure_ascii=True))
        except (ProbeInputError, ValueError) as exc:
            probe, problems = {}, [f"probe: {clip(str(exc), 300)}"]
        report.probe = probe
        report.gpu_visible = gpu_visible(probe)
        report.failures += problems + judged(probe, loaded, image, "", target=TARGET)
    health = raw.get("health")
    if policy.health and isinstance(health, dict):
        report.health = HealthResult.model_validate(health)
        report.failures += check_health(policy.health, report.health)
    elif policy.health:
        report.failures.append("health: no result came back from the instance (does the image set `port`?)")
    smoke = raw.get("smoke")
    sm = policy.smoke
    if sm is not None and isinstance(smoke, dict):
        body = base64.b64decode(smoke.get("body_b64", ""))
        fields = {k: v for k, v in smoke.items() if k != "body_b64"}
        fields["sha256"] = hashlib.sha256(body).hexdigest() if body else ""
        report.smoke = SmokeResult.model_validate(fields)
        report.failures += check_smoke(loaded, sm, report.smoke, body)
    elif sm is not None and report.health is not None and report.health.ready:
        report.failures.append(f"smoke {sm.method} {sm.path}: no result came back from the instance")
    report.ok = not report.failures
    return report
