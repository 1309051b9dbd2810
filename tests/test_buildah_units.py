"""The daemonless engine's pure parts: buildah's progress lines, podman's arguments and logs, storage flags, and
the engine choice's usage errors (no buildah or podman needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagekit.runners.buildah import is_error_line, local_name, parse_step, storage_flags, storage_spec
from imagekit.runners.podman import CDI_GPUS, create_argv, read_k8s_log


def test_buildah_step_lines_become_steps() -> None:
    step = parse_step("[2/3] STEP 4/7: RUN --mount=type=secret,id=ca sh /tmp/imagekit/runtime.sh install")
    assert step is not None
    assert (step.stage, step.step) == ("2/3", "4/7")
    assert str(step).startswith("[4/7] RUN --mount=type=secret")
    single = parse_step("STEP 1/2: FROM scratch")
    assert single is not None and single.stage == "" and single.what == "FROM scratch"
    assert parse_step("Collecting torch==2.13.0") is None
    assert parse_step("--> Using cache 5f0e1c") is None


def test_buildah_errors_are_recognised() -> None:
    assert is_error_line('Error: building at STEP "RUN false": while running runtime: exit status 1')
    assert is_error_line('error building at STEP "RUN false": exit status 1')
    assert is_error_line('time="2026-12-04T19:00:00Z" level=error msg="x"')
    assert not is_error_line("STEP 3/5: RUN echo error handling")


def test_local_names_get_the_localhost_prefix() -> None:
    assert local_name("imagekit/tts-cpu-app:0123") == "localhost/imagekit/tts-cpu-app:0123"
    assert local_name("tts:latest") == "localhost/tts:latest"
    assert local_name("127.0.0.1:5000/team/tts:1") == "127.0.0.1:5000/team/tts:1"
    assert local_name("localhost/x:1") == "localhost/x:1"


def test_storage_flags_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STORAGE_DRIVER", "IMAGEKIT_STORAGE_ROOT", "IMAGEKIT_STORAGE_RUNROOT"):
        monkeypatch.delenv(var, raising=False)
    assert storage_flags() == [] and storage_spec() == ""
    # in a pod: the variable alone does not reach buildah, so it becomes the flag
    monkeypatch.setenv("STORAGE_DRIVER", "vfs")
    monkeypatch.setenv("IMAGEKIT_STORAGE_ROOT", "/workspace/storage")
    assert storage_flags() == ["--storage-driver=vfs", "--root=/workspace/storage"]
    assert storage_spec() == "[vfs@/workspace/storage]"
    monkeypatch.setenv("IMAGEKIT_STORAGE_RUNROOT", "/tmp/run")
    assert storage_spec() == "[vfs@/workspace/storage+/tmp/run]"


def test_podman_containers_get_rlimits_cdi_gpus_and_their_own_log(tmp_path: Path) -> None:
    argv = create_argv(
        "v1", "img:1", labels={"imagekit.verify": "1"}, log_path=tmp_path / "c.log", entrypoint=["/bin/sh", "-c"],
        command=["echo"], ro_mounts={"/src/probe.py": "/run/probe.py"}, gpu=True, network=False, ports={7860: "127.0.0.1"},
    )  # fmt: skip
    joined = " ".join(argv)
    assert "--ulimit nofile=16384:16384 --ulimit nproc=8192:8192" in joined
    assert argv[argv.index("--device") + 1] == CDI_GPUS == "nvidia.com/gpu=all"
    assert argv[argv.index("--network") + 1] == "none"
    assert argv[argv.index("--publish") + 1] == "127.0.0.1::7860/tcp"
    assert argv[argv.index("--volume") + 1] == "/src/probe.py:/run/probe.py:ro"
    assert argv[argv.index("--entrypoint") + 1] == '["/bin/sh", "-c"]'
    assert argv[-2:] == ["img:1", "echo"]
    cpu = create_argv("v2", "img:1", labels={}, log_path=tmp_path / "d.log")
    assert "--device" not in cpu and "--network" not in cpu


def test_k8s_file_logs_keep_stdout_and_stderr_apart(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_text(
        "2026-12-04T19:00:00.1+00:00 stderr F warming up\n"
        '2026-12-04T19:00:00.2+00:00 stdout P {"torch": \n'
        '2026-12-04T19:00:00.3+00:00 stdout F "2.13.0"}\n'
        "2026-12-04T19:00:00.4+00:00 stderr F done\n"
    )
    assert read_k8s_log(log, stderr=False) == '{"torch": "2.13.0"}\n'
    assert read_k8s_log(log, stdout=False) == "warming up\ndone\n"
    assert read_k8s_log(tmp_path / "missing.log") == ""


def test_engine_choice_usage_errors(tmp_path: Path) -> None:
    from imagekit.api.build import build
    from imagekit.errors import UsageError

    spec = Path(__file__).resolve().parent.parent / "examples" / "tts" / "imagekit-cpu.yaml"
    with pytest.raises(UsageError, match="--engine must be docker or buildah"):
        build(spec, "docker", engine_kind="kaniko")
    with pytest.raises(UsageError, match="--engine applies to --target docker"):
        build(spec, "ami", engine_kind="buildah")


def test_spec_takes_the_engine(tmp_path: Path) -> None:
    from conftest import copy_example

    from imagekit.errors import SpecError
    from imagekit.spec import load_spec

    text = (copy_example(tmp_path / "tts") / "imagekit-cpu.yaml").read_text(encoding="utf-8")
    good = tmp_path / "tts" / "good.yaml"
    good.write_text(text.replace("build:\n", "build:\n  engine: buildah\n", 1), encoding="utf-8")
    assert load_spec(good).spec.build.engine == "buildah"
    bad = tmp_path / "tts" / "bad.yaml"
    bad.write_text(text.replace("build:\n", "build:\n  engine: kaniko\n", 1), encoding="utf-8")
    with pytest.raises(SpecError, match=r"build\.engine"):
        load_spec(bad)


def test_doctor_judges_seccomp_storage_and_userns_for_a_pod() -> None:
    from imagekit.doctor_daemonless import check_seccomp, check_storage, check_userns

    filtered = "Seccomp:\t2\nCapEff:\t00000000a80425fb\n"  # the runtime's default profile, no SYS_ADMIN
    assert not check_seccomp(container=True, status=filtered).ok
    assert "Unconfined" in check_seccomp(container=True, status=filtered).fix
    assert check_seccomp(container=True, status="Seccomp:\t0\nCapEff:\t0\n").ok
    with_admin = "Seccomp:\t2\nCapEff:\t00000000a82425fb\n"  # bit 21: CAP_SYS_ADMIN
    assert check_seccomp(container=True, status=with_admin).ok
    assert check_seccomp(container=False, status=filtered).ok
    # in a pod the overlay driver fails; the vfs flag and chroot isolation are what to add
    pod = check_storage(container=True, env={}, driver_in_use="overlay", build_ok=False)
    assert not pod.ok and "STORAGE_DRIVER=vfs" in pod.fix
    vfs = {"STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}
    assert check_storage(container=True, env=vfs, driver_in_use="vfs", build_ok=False).ok
    assert check_storage(container=False, env={}, driver_in_use="overlay", build_ok=False).ok
    assert check_userns(root=True).ok


def test_doctor_with_buildah_needs_no_docker_engine_for_a_docker_only_spec(tmp_path: Path) -> None:
    from conftest import copy_example

    from imagekit.doctor import needs_of
    from imagekit.spec import load_spec

    spec = copy_example(tmp_path / "tts") / "imagekit-cpu.yaml"
    spec.write_text(spec.read_text(encoding="utf-8").replace("targets: [docker, ami]", "targets: [docker]"))
    loaded = load_spec(spec)
    needs = needs_of(loaded, engine="buildah", push="127.0.0.1:5000/x")
    assert "docker engine" not in needs.why and "buildkit" not in needs.why
    assert {"buildah", "podman", "skopeo", "seccomp", "storage driver", "buildah build"} <= set(needs.why)
    assert {"docker engine", "buildkit"} <= set(needs_of(loaded).why)


def test_the_podman_log_is_read_bounded_per_stream(tmp_path: Path) -> None:
    """The probe's stdout from a k8s-file log: partial lines joined, stderr apart, never more than `limit` bytes."""
    from imagekit.runners.podman import read_k8s_log_bytes

    log = tmp_path / "container.log"
    log.write_bytes(
        b'2026-12-04T20:00:00Z stdout P {"a": \n'
        b"2026-12-04T20:00:00Z stderr F warning\n"
        b"2026-12-04T20:00:00Z stdout F 1}\n"
        b"2026-12-04T20:00:01Z stdout F " + b"x" * 5000 + b"\n"
    )
    out, more = read_k8s_log_bytes(log, stdout=True, limit=1 << 20)
    assert (out.split(b"\n")[0], more) == (b'{"a": 1}', False)
    assert read_k8s_log_bytes(log, stdout=False, stderr=True, limit=100) == (b"warning\n", False)
    cut, more = read_k8s_log_bytes(log, stdout=True, limit=100)
    assert len(cut) == 100 and more is True
    assert read_k8s_log_bytes(tmp_path / "none.log", limit=10) == (b"", False)


def test_a_service_in_the_pods_network_is_reached_on_its_own_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """In a pod (containers.conf netns = "host") podman publishes nothing: the port is the service's own."""
    from imagekit.runners import podman as podman_mod
    from imagekit.runners.process import Result

    answers: dict[str, Result] = {}

    def fake(*args: str, **_kw: object) -> Result:
        return answers[args[0]]

    monkeypatch.setattr(podman_mod, "podman", fake)
    made = podman_mod.PodmanContainer("svc", tmp_path / "log")
    answers["port"] = Result(["podman", "port"], 0, output="127.0.0.1:41234\n")
    assert made.published_port(8000) == 41234
    answers["port"] = Result(["podman", "port"], 0, output="")
    answers["inspect"] = Result(["podman", "inspect"], 0, output="host\n")
    assert made.published_port(8000) == 8000
    answers["inspect"] = Result(["podman", "inspect"], 0, output="bridge\n")
    assert made.published_port(8000) is None  # not bound yet
    answers["inspect"] = Result(["podman", "inspect"], 125, output="Error: no such container\n")
    assert made.published_port(8000) is None
