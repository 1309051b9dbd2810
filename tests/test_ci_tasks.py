"""docs/ci's Tekton and Concourse tasks run as written: each task's script, taken from the YAML, runs in the task
image (docs/ci/task-image, built FROM the suite's bootstrapped Debian base: no registry pull) in a container with
no --privileged, only what the Tekton step's securityContext grants (mapped to docker run flags).

A small spec stands in for the pipeline's `spec` param (a bootstrapped base and an app layer with weights, served
by python3's http.server, verify.gpu optional: no GPU here), with its own store (`store: manifests`) and signing
key (`signing: {key: keys/imagekit.key}`) instead of the docs' S3 and KMS: the scripts take both from the spec.
The push goes to a docker-registry in a sidecar container whose network namespace the task containers join, as
a Tekton sidecar shares the pod's. The first build is cold in the pod (debootstrap, vfs); the Concourse build
reuses the containers cache the Tekton build filled, as the next night on a worker would.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import IN_CI, REPO, require_docker, require_tool

# docker runs the task containers; the host's buildah reads the store the build pod left in its workspace
pytestmark = [pytest.mark.docker, pytest.mark.buildah, pytest.mark.slow]

CI_DIR = REPO / "docs" / "ci"
IMAGEKIT = [sys.executable, "-m", "imagekit"]
# what Tekton substitutes in a task's script; anything left over would reach bash as a command substitution
TEKTON_VAR = re.compile(r"\$\((?:params|workspaces|results|tasks|context)\.[^)]*\)")
REGISTRY = "127.0.0.1:5000"
WEIGHTS = bytes(range(256)) * 16

SPEC = """\
version: 1
name: {name}
layers:
  base:
    from: {{bootstrap: {{distro: debian, suite: bookworm}}}}
  app:
    parent: base
    copy: [{{src: site/, dest: /opt/site}}]
    models:
      - {{src: models/w.bin, dest: /opt/models/w.bin, sha256: "{sha}"}}
    user: app
    workdir: /opt/site
    command: ["python3", "-m", "http.server", "8000"]
    port: 8000
images:
  ci:
    leaf: app
    repository: imagekit-test/{name}
verify:
  gpu: optional
  health: {{path: /index.html, timeout: 120}}
  smoke: {{method: GET, path: /index.html, expect: {{status: 200, min_bytes: 20}}}}
build: {{engine: buildah}}
store: manifests
signing: {{key: keys/imagekit.key}}
"""


def _docker(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([require_docker(), *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        pytest.fail(f"docker {' '.join(args[:3])} failed: {res.stderr[-2000:]}")
    return res


def _bootstrapped_base() -> str:
    """The suite's bootstrapped Debian base in the Docker Engine (made here, as root, when it is missing)."""
    from imagekit.names import base_tag
    from imagekit.runners.bootstrap import ensure_base
    from imagekit.runners.docker import DockerEngine
    from imagekit.spec import Bootstrap

    boot = Bootstrap(distro="debian", suite="bookworm")
    tag = base_tag("base", boot)
    engine = DockerEngine()
    if not engine.exists(tag):
        if os.geteuid() != 0:
            (pytest.fail if IN_CI else pytest.skip)(f"{tag} is missing and making it needs root once (debootstrap)")
        ensure_base(engine, "base", boot)
    return tag


@dataclass
class Pod:
    """The task image, a sidecar with a registry, and the host folders the tasks' workspaces are."""

    image: str
    sidecar: str
    root: Path
    name: str
    cleanup: list[Path] = field(default_factory=list)

    def run(self, script: str, *, step: str, flags: list[str], mounts: dict[Path, str], workdir: str,
            timeout: float = 1500) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run a task's script as Tekton runs a step's: a file under /tekton/scripts, in the task image."""
        scripts = self.root / "scripts"
        scripts.mkdir(exist_ok=True)
        path = scripts / step
        path.write_text(script if script.startswith("#!") else "#!/usr/bin/env bash\n" + script)
        path.chmod(0o755)
        argv = ["run", "--rm", "--name", f"{self.name}-{step}", "--network", f"container:{self.sidecar}"]
        argv += ["-v", f"{scripts}:/tekton/scripts:ro", "-w", workdir, *flags]
        for host, inside in mounts.items():
            argv += ["-v", f"{host}:{inside}"]
        return _docker(*argv, self.image, f"/tekton/scripts/{step}", timeout=timeout, check=False)


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    require_docker()
    require_tool("docker-registry")
    require_tool("buildah")
    if sys.version_info[:2] != (3, 11):
        pytest.fail("build.sh makes the task image's wheels with this Python: bookworm's python3 is 3.11")
    base = _bootstrapped_base()
    root = tmp_path_factory.mktemp("ci-tasks")
    name = f"ikci-{uuid.uuid4().hex[:8]}"
    image = f"imagekit-test/{name}-task:1"
    build = subprocess.run(
        ["bash", str(CI_DIR / "task-image" / "build.sh"), image, base],
        env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    try:
        assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
        (root / "registry.yml").write_text(
            "version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: /var/lib/registry}}\n"
            f"http: {{addr: {REGISTRY}}}\n"
        )
        sidecar = f"{name}-sidecar"
        _docker("run", "-d", "--name", sidecar, "-v", "/usr/bin/docker-registry:/usr/local/bin/docker-registry:ro",
                "-v", f"{root / 'registry.yml'}:/etc/registry.yml:ro", image,
                "docker-registry", "serve", "/etc/registry.yml")  # fmt: skip
        made = Pod(image, sidecar, root, name)
        yield made
    finally:
        _docker("rm", "--force", f"{name}-sidecar", check=False)
        # the tasks ran as root: their files go through a container too, in case this test is not root
        if any(root.iterdir()):
            _docker("run", "--rm", "-v", f"{root}:/d", image, "sh", "-c", "rm -rf /d/*", check=False)
        _docker("rmi", image, check=False)


def _source(folder: Path, name: str) -> Path:
    """A checkout with the small spec, its files and a signing key made on the host."""
    (folder / "site").mkdir(parents=True)
    (folder / "site" / "index.html").write_text("<p>imagekit in a pod, no daemon</p>\n")
    (folder / "models").mkdir()
    (folder / "models" / "w.bin").write_bytes(WEIGHTS)
    spec = folder / "imagekit.yaml"
    spec.write_text(SPEC.format(name=name, sha=hashlib.sha256(WEIGHTS).hexdigest()))
    keys = subprocess.run([*IMAGEKIT, "keygen", "--out", str(folder / "keys")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)  # fmt: skip
    assert keys.returncode == 0, keys.stderr
    # the release key's public half, committed beside the spec (collect promotes only what it signed)
    (folder / "imagekit.trust.yaml").write_text("keys: [{pem: keys/imagekit.pub}]\n")
    return spec


def _imagekit(args: list[str], spec: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IMAGEKIT, *args], capture_output=True, text=True, cwd=spec.parent, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)  # fmt: skip


def _substitute(script: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        script = script.replace(f"$({key})", value)
    left = TEKTON_VAR.search(script)
    assert left is None, f"nothing stands in for {left.group(0) if left else ''}"
    return script


def _tekton_task(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((CI_DIR / "tekton.yml").read_text(encoding="utf-8"))
    return next(t for t in doc["spec"]["tasks"] + doc["spec"]["finally"] if t["name"] == name)


def security_flags(step: dict[str, Any]) -> list[str]:
    """docker run flags granting what a Tekton step's securityContext grants, and no more (never --privileged)."""
    sc = step.get("securityContext") or {}
    assert not sc.get("privileged"), f"step {step['name']} asks for a privileged container"
    assert set(sc) <= {"privileged", "runAsUser", "runAsNonRoot", "capabilities", "seccompProfile"}, sorted(sc)
    # RuntimeDefault: the container runtime's default seccomp profile (and AppArmor's), docker's here
    assert (sc.get("seccompProfile") or {}).get("type", "RuntimeDefault") == "RuntimeDefault"
    assert not (sc.get("capabilities") or {}).get("drop")
    flags = ["--user", str(sc["runAsUser"])] if "runAsUser" in sc else []
    for cap in (sc.get("capabilities") or {}).get("add", []):
        flags += ["--cap-add", cap]
    for env in step.get("env", []):
        flags += ["--env", f"{env['name']}={env['value']}"]
    return flags


def _step_volumes(task: dict[str, Any], step: dict[str, Any], root: Path) -> dict[Path, str]:
    """The step's volumeMounts; a hostPath (the node's CDI specs) is an empty folder here (no GPU node)."""
    volumes = {v["name"]: v for v in task["taskSpec"].get("volumes", [])}
    mounts: dict[Path, str] = {}
    for mount in step.get("volumeMounts", []):
        assert "hostPath" in volumes[mount["name"]], mount
        host = root / "hostpath" / mount["name"]
        host.mkdir(parents=True, exist_ok=True)
        mounts[host] = mount["mountPath"] + (":ro" if mount.get("readOnly") else "")
    return mounts


def _store_images(containers: Path, image: str) -> list[str]:
    """The images in the build pod's containers-storage (its vfs store in the containers workspace)."""
    out = subprocess.run(
        ["buildah", "--storage-driver=vfs", f"--root={containers / image / 'storage'}",
         f"--runroot={containers / image / 'run'}", "images", "--format", "{{.Name}}:{{.Tag}}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _registry_digest(pod: Pod, repo: str, tag: str) -> str:
    res = _docker("exec", pod.sidecar, "skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}",
                  f"docker://{REGISTRY}/{repo}:{tag}", timeout=120)  # fmt: skip
    return res.stdout.strip()


@dataclass
class TektonRun:
    spec: Path
    containers: Path
    jobs: list[str]
    build: subprocess.CompletedProcess[str]
    collect: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def tekton(pod: Pod) -> TektonRun:
    """The Tekton pipeline's three tasks, in order, each task's script in its own container."""
    source = pod.root / "source"
    spec = _source(source, pod.name)
    containers = pod.root / "containers"
    containers.mkdir()
    spec_param = spec.name
    ws = {"workspaces.source.path": "/workspace/source", "workspaces.containers.path": "/workspace/containers"}
    mounts = {source: "/workspace/source", containers: "/workspace/containers"}
    common = {"params.spec": spec_param, "params.task-image": pod.image, **ws}

    plan_task = _tekton_task("plan")
    (step,) = plan_task["taskSpec"]["steps"]
    results = pod.root / "results"
    results.mkdir()
    script = _substitute(step["script"], {**common, "results.started.path": "/tekton/results/started",
                                          "results.jobs.path": "/tekton/results/jobs"})  # fmt: skip
    plan = pod.run(
        script,
        step="plan",
        flags=security_flags(step),
        workdir=step["workingDir"].replace("$(workspaces.source.path)", "/workspace/source"),
        mounts={**mounts, results: "/tekton/results"},
        timeout=300,
    )
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    jobs = json.loads((results / "jobs").read_text())
    started = (results / "started").read_text()

    build_task = _tekton_task("build")
    (step,) = build_task["taskSpec"]["steps"]
    flags = security_flags(step)
    builds = []
    for job in jobs:  # the matrix: one TaskRun per job
        script = _substitute(step["script"], {**common, "params.job": job, "params.registry": f"{REGISTRY}/team"})
        builds.append(pod.run(script, step="build", flags=flags, workdir="/workspace/source",
                              mounts={**mounts, **_step_volumes(build_task, step, pod.root)}))  # fmt: skip

    collect_task = _tekton_task("collect")
    (step,) = collect_task["taskSpec"]["steps"]
    script = _substitute(step["script"], {**common, "params.started": started})
    collect = pod.run(script, step="collect", flags=security_flags(step), workdir="/workspace/source",
                      mounts=mounts, timeout=300)  # fmt: skip
    assert len(builds) == 1, jobs
    return TektonRun(spec, containers, jobs, builds[0], collect)


def test_the_tekton_build_task_builds_verifies_signs_and_pushes_in_an_unprivileged_pod(
    pod: Pod, tekton: TektonRun
) -> None:
    assert tekton.jobs == ["ci docker"], tekton.jobs  # a cold store: the one image is stale
    build = tekton.build
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-5000:]
    assert "signed manifest:" in build.stdout + build.stderr
    # the image is in the pod's containers-storage, in the containers workspace
    stored = _store_images(tekton.containers, "ci")
    assert any(ref.startswith(f"localhost/imagekit-test/{pod.name}:") for ref in stored), stored
    assert any(ref.startswith("localhost/imagekit-base-base:") for ref in stored), stored  # debootstrapped in the pod
    # a signed record in the spec's store, verified here with the spec's key, for the pushed digest
    listed = _imagekit(["manifest", "list", "-f", str(tekton.spec), "--json"], tekton.spec)
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert len(records) == 1, records
    manifest_id = records[0]["id"]
    verified = _imagekit(["manifest", "verify", manifest_id, "-f", str(tekton.spec)], tekton.spec)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = _imagekit(["manifest", "show", manifest_id, "-f", str(tekton.spec), "--json"], tekton.spec)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["verified"] is True and record["builder"].get("buildah"), record["builder"]
    report = record["report"]
    assert report["ok"] and report["host"].startswith("podman"), report  # verified with podman in the pod
    assert report["health"]["ready"] and report["smoke"]["status"] == 200, report
    # collect promoted the verified build: the canary channel resolves to what the registry serves
    assert tekton.collect.returncode == 0, tekton.collect.stdout[-3000:] + tekton.collect.stderr[-3000:]
    resolved = _imagekit(["resolve", "ci", "--channel", "canary", "-f", str(tekton.spec)], tekton.spec)
    assert resolved.returncode == 0, resolved.stderr
    ref, digest = resolved.stdout.strip().split("@", 1)
    assert ref == f"{REGISTRY}/team/ci"
    tag = next(r for r in stored if r.startswith(f"localhost/imagekit-test/{pod.name}:") and not r.endswith(":latest"))
    assert _registry_digest(pod, "team/ci", tag.rsplit(":", 1)[1]) == digest


def test_the_concourse_tasks_run_their_scripts_with_the_same_grants(pod: Pod, tekton: TektonRun) -> None:
    """The Concourse plan, build and collect scripts; the build with the Tekton build step's grants (Concourse
    itself can only say privileged: true) and the containers cache the Tekton build left (a warm worker)."""
    doc = yaml.safe_load((CI_DIR / "concourse.yml").read_text(encoding="utf-8"))
    steps = doc["jobs"][0]["plan"]
    source = pod.root / "concourse" / "models-repo"
    spec = _source(source, pod.name)
    build_dir = source.parent
    (build_dir / "plan").mkdir()
    (build_dir / "report").mkdir()
    # the containers cache: the store of layers the Tekton build filled (Concourse mounts a task's cache inside
    # its build folder, whose name changes with every build)
    (build_dir / "containers").mkdir()
    mounts = {build_dir: "/tmp/build/e55deab7", tekton.containers: "/tmp/build/e55deab7/containers"}

    def task(name: str, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        step = next(s for s in steps if s.get("task") == name or s.get("try", {}).get("task") == name)
        step = step.get("try", step)
        config = step["config"]
        env = {k: str(v) for k, v in config["params"].items() if "((" not in str(v)}
        env.update({"SPEC": spec.name, **extra})
        assert config["run"]["path"] == "bash" and config["run"]["args"][0] == "-ec"
        flags = [f for k, v in env.items() for f in ("--env", f"{k}={v}")]
        if step.get("privileged"):
            flags += security_flags(next(s for s in _tekton_task("build")["taskSpec"]["steps"]))
        script = "#!/usr/bin/env bash\nset -e\n" + config["run"]["args"][1]
        return pod.run(script, step=f"concourse-{name}", flags=flags, mounts=mounts,
                       workdir=f"/tmp/build/e55deab7/{config['run']['dir']}")  # fmt: skip

    plan = task("plan", {})
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    jobs = json.loads((build_dir / "plan" / "jobs.json").read_text())
    assert [(j["image"], j["target"]) for j in jobs] == [("ci", "docker")], jobs
    (job,) = jobs
    build = task("build", {"IMAGE": job["image"], "TARGET": job["target"], "FORCE": job["force"],
                           "REGISTRY": f"{REGISTRY}/concourse"})  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-5000:]
    assert "layers built: none (all reused)" in build.stdout + build.stderr  # the worker's cache kept every layer
    collect = task("collect", {"STARTED": (build_dir / "plan" / "started").read_text()})
    assert collect.returncode == 0, collect.stdout[-3000:] + collect.stderr[-3000:]
    resolved = _imagekit(["resolve", "ci", "--channel", "canary", "-f", str(spec)], spec)
    assert resolved.returncode == 0, resolved.stderr
    assert resolved.stdout.startswith(f"{REGISTRY}/concourse/ci@sha256:")
