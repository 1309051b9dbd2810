"""docs/ci: every file parses as YAML and every `imagekit ...` command line in it (cron comments included) is
accepted by imagekit's own argument parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from conftest import REPO

from imagekit.cli import app

# typer vendors its own click: take its exception root from a public typer class, not from a click import
ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
CI_DIR = REPO / "docs" / "ci"
CI_FILES = sorted(p for p in CI_DIR.iterdir() if p.suffix in (".yml", ".yaml"))
# `imagekit` (or a path ending in /imagekit) followed by its arguments, up to the end of the line
COMMAND_RE = re.compile(r"(?:^|[\s'\"(])(?:\S*/)?imagekit[ \t]+(?P<args>[a-z][^\n]*)")
CRON_RE = re.compile(r"^#\s+(\S+\s+){5}.*imagekit nightly", re.MULTILINE)


def imagekit_commands(text: str) -> list[list[str]]:
    """The argument lists of every imagekit invocation in a text (a shell operator, redirection or the `)` that
    closes a `$(...)` ends a command)."""
    out = []
    for m in COMMAND_RE.finditer(text):
        lex = shlex.shlex(m.group("args"), posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        args = []
        # tokens are read lazily: a quote that belongs to the surrounding shell, after the end, is never read
        for token in lex:
            if set(token) <= set("();<>|&"):
                break
            args.append(token)
        out.append(args)
    return out


def parse(args: list[str]) -> Any:
    """Parse args like the `imagekit` command would (click make_context), without running anything."""
    group: Any = typer.main.get_command(app)
    ctx = group.make_context("imagekit", list(args))
    # the subcommand name: `protected_args` in older click, `_protected_args` in the click typer vendors
    head = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])
    name, cmd, rest = group.resolve_command(ctx, [*head, *ctx.args])
    assert cmd is not None and name is not None
    return cmd.make_context(name, rest, parent=ctx)


def test_there_are_the_three_ci_systems() -> None:
    names = {p.name for p in CI_FILES}
    assert {"github-actions.yml", "concourse.yml", "tekton.yml"} <= names


@pytest.mark.parametrize("path", CI_FILES, ids=lambda p: p.name)
def test_ci_file_parses_and_its_imagekit_commands_are_accepted(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict) and doc
    assert CRON_RE.search(text), f"{path.name} has no plain cron line running imagekit nightly"
    commands = imagekit_commands(text)
    assert any(c[0] == "nightly" for c in commands), f"{path.name} never runs imagekit nightly"
    for args in commands:
        try:
            ctx = parse(args)
        except ClickException as exc:
            pytest.fail(f"{path.name}: `imagekit {shlex.join(args)}` is rejected: {exc}")
        assert ctx.command.name == args[0]
        if args[0] == "nightly":
            assert ctx.params["file"] is not None  # a scheduled job names its spec


def test_the_checker_rejects_a_wrong_command() -> None:
    # the test above would pass vacuously if the parser accepted anything
    with pytest.raises(ClickException):
        parse(["nightly", "--target", "all", "--no-such-option"])
    with pytest.raises(ClickException):
        parse(["nightly", "--jobs", "zero"])
    assert imagekit_commands("run: .venv/bin/imagekit nightly -f x.yaml --jobs 2 && echo done") == [
        ["nightly", "-f", "x.yaml", "--jobs", "2"]
    ]
    assert imagekit_commands('m="$(imagekit plan -f "$S" --matrix)" # x\nimagekit plan --json > p.json') == [
        ["plan", "-f", "$S", "--matrix"],
        ["plan", "--json"],
    ]


def _doc(name: str) -> Any:
    return yaml.safe_load((CI_DIR / name).read_text(encoding="utf-8"))


def test_the_github_workflow_validates_against_the_github_workflow_schema(tmp_path: Path) -> None:
    """check-jsonschema vendors SchemaStore's github-workflow schema: this runs offline."""
    import subprocess
    import sys

    cli = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
    res = subprocess.run([*cli, str(CI_DIR / "github-actions.yml")], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    # the check can fail: a job without runs-on is not a workflow
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    steps: [{run: echo}]\n")
    res = subprocess.run([*cli, str(broken)], capture_output=True, text=True, check=False)
    assert res.returncode == 1, res.stdout + res.stderr


def test_the_github_workflow_fans_out_plan_build_collect() -> None:
    jobs = _doc("github-actions.yml")["jobs"]
    assert list(jobs) == ["plan", "build", "collect"]
    plan_steps = " ".join(str(s.get("run", "")) for s in jobs["plan"]["steps"])
    assert "plan -f" in plan_steps and "--matrix" in plan_steps and "GITHUB_OUTPUT" in plan_steps
    build = jobs["build"]
    assert build["needs"] == "plan" and "gpu" in build["runs-on"]
    assert build["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert build["strategy"]["fail-fast"] is False
    runs = [s["run"] for s in build["steps"] if "imagekit build" in str(s.get("run", ""))]
    assert len(runs) == 2 and all("${{ matrix.image }}" in r and "${{ matrix.force }}" in r for r in runs)
    collect = jobs["collect"]
    assert collect["needs"] == ["plan", "build"] and "always()" in collect["if"]
    assert any("--collect" in str(s.get("run", "")) for s in collect["steps"])
    text = (CI_DIR / "github-actions.yml").read_text(encoding="utf-8")
    assert "store: s3://" in text and "awskms:" in text and "imagekit.trust.yaml" in text


def test_the_tekton_pipeline_builds_through_a_matrix_with_no_privileged_container() -> None:
    doc = _doc("tekton.yml")
    assert doc["apiVersion"] == "tekton.dev/v1" and doc["kind"] == "Pipeline"
    tasks = {t["name"]: t for t in doc["spec"]["tasks"] + doc["spec"]["finally"]}
    assert set(tasks) == {"plan", "build", "collect"}
    assert {r["name"]: r["type"] for r in tasks["plan"]["taskSpec"]["results"]} == {"started": "string",
                                                                                    "jobs": "array"}  # fmt: skip
    build = tasks["build"]
    assert build["matrix"]["params"] == [{"name": "job", "value": "$(tasks.plan.results.jobs[*])"}]
    assert build["runAfter"] == ["plan"]
    assert tasks["collect"] in doc["spec"]["finally"]  # collect runs after failed builds too
    for task in tasks.values():
        for step in task["taskSpec"]["steps"]:
            assert not (step.get("securityContext") or {}).get("privileged"), step["name"]
            # the task image made by docs/ci/task-image/build.sh: imagekit, buildah, podman, skopeo
            assert step["image"] == "$(params.task-image)", step["name"]
            assert "pip install" not in step["script"]


def test_the_tekton_build_step_is_daemonless_and_unprivileged() -> None:
    doc = _doc("tekton.yml")
    text = (CI_DIR / "tekton.yml").read_text(encoding="utf-8")
    assert "DOCKER_HOST" not in text and "python:3.11" not in text  # no remote engine, no image without buildah
    build = next(t for t in doc["spec"]["tasks"] if t["name"] == "build")
    assert {w["name"] for w in build["taskSpec"]["workspaces"]} == {"source", "containers"}
    (step,) = build["taskSpec"]["steps"]
    sc = step["securityContext"]
    assert sc["privileged"] is False and sc["runAsUser"] == 0  # buildah as non-root fails on uid maps in a pod
    assert set(sc["capabilities"]["add"]) == {"SYS_ADMIN", "NET_ADMIN"} and "drop" not in sc["capabilities"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"} and "allowPrivilegeEscalation" not in sc
    env = {e["name"]: e["value"] for e in step["env"]}
    assert env["STORAGE_DRIVER"] == "vfs" and env["BUILDAH_ISOLATION"] == "chroot"
    assert step["computeResources"]["limits"]["nvidia.com/gpu"] == "1"  # verification boots on this GPU node
    (command,) = [c for c in imagekit_commands(step["script"]) if c[0] == "build"]
    assert command[command.index("--engine") + 1] == "buildah" and "--push" in command
    for var in ("IMAGEKIT_STORAGE_ROOT", "TMPDIR", "$(workspaces.containers.path)"):
        assert var in step["script"], var
    assert "store: s3://" in text and "awskms:" in text and "imagekit.trust.yaml" in text


def test_the_task_image_has_what_the_steps_run() -> None:
    from test_render import lint

    folder = CI_DIR / "task-image"
    dockerfile = (folder / "Dockerfile").read_text(encoding="utf-8")
    for package in ("buildah", "podman", "skopeo", "crun", "debootstrap", "python3-venv"):
        assert re.search(rf"\b{package}\b", dockerfile), package
    assert "COPY containers.conf storage.conf /etc/containers/" in dockerfile
    conf = (folder / "containers.conf").read_text(encoding="utf-8")
    for line in ('netns = "host"', 'cgroups = "disabled"', "keyring = false", "default_sysctls = []",
                 "no_pivot_root = true"):  # fmt: skip
        assert line in conf, line
    assert 'driver = "vfs"' in (folder / "storage.conf").read_text(encoding="utf-8")
    lint(folder / "Dockerfile")


def _scripts() -> list[tuple[str, str]]:
    """Every Tekton step's script and Concourse task's bash, with Tekton's variables as plain words."""
    out = []
    for task in _doc("tekton.yml")["spec"]["tasks"] + _doc("tekton.yml")["spec"]["finally"]:
        for step in task["taskSpec"]["steps"]:
            out.append((f"tekton-{task['name']}", re.sub(r"\$\(([a-z.-]+)\)", r"/tekton/\1", step["script"])))
    for entry in _doc("concourse.yml")["jobs"][0]["plan"]:
        task = entry.get("try", entry)
        if "config" in task:
            out.append((f"concourse-{task['task']}", "#!/usr/bin/env bash\n" + task["config"]["run"]["args"][1]))
    return out


def test_the_task_scripts_are_shellcheck_clean(tmp_path: Path) -> None:
    import subprocess

    from test_render_scripts import _shellcheck

    files = []
    for name, script in _scripts():
        files.append(tmp_path / f"{name}.sh")
        files[-1].write_text(script)
    files.append(CI_DIR / "task-image" / "build.sh")
    assert len(files) == 7
    proc = subprocess.run([_shellcheck(), "--shell=bash", "--severity=info", *map(str, files)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout


def test_the_concourse_pipeline_builds_across_the_plan() -> None:
    doc = _doc("concourse.yml")
    assert set(doc) <= {"resources", "resource_types", "jobs", "groups", "var_sources", "display"}
    (job,) = doc["jobs"]
    steps = job["plan"]
    names = [s.get("task") or s.get("load_var") or s.get("get") or s["try"]["task"] for s in steps]
    assert names == ["nightly-timer", "models-repo", "plan", "jobs", "started", "build", "collect"]
    build = steps[5]["try"]
    assert build["across"][0]["values"] == "((.:jobs))" and build["tags"] == ["gpu"]
    assert build["config"]["params"]["IMAGE"] == "((.:job.image))"
    text = (CI_DIR / "concourse.yml").read_text(encoding="utf-8")
    assert "DOCKER_HOST" not in text and "python" not in str([s.get("config", {}).get("image_resource") for s in steps])
    # Concourse grants capabilities only through `privileged` (see the file's comment): the build task alone
    assert [s.get("try", s).get("task") for s in steps if s.get("try", s).get("privileged")] == ["build"]
    params = build["config"]["params"]
    assert params["STORAGE_DRIVER"] == "vfs" and params["BUILDAH_ISOLATION"] == "chroot"
    assert build["config"]["caches"] == [{"path": "containers"}]
    (command,) = [c for c in imagekit_commands(build["config"]["run"]["args"][1]) if c[0] == "build"]
    assert command[command.index("--engine") + 1] == "buildah" and "--push" in command
