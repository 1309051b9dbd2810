"""The AMI's systemd unit: the counterpart of the Dockerfile's final stage (USER, ENV, WORKDIR, CMD). Pure.

The leaf layer's Packer template installs and enables it (render_service_install), boot-and-verify checks it.
"""

from __future__ import annotations

import shlex

from imagekit.names import VENV, WANTS_DIR, prewarm_paths, service_unit_path
from imagekit.render.scripts import layer_steps
from imagekit.spec import LoadedSpec

NONROOT_ID = "65532"  # the Dockerfile's non-root id, used when the spec names no user
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_UNIT_EOF = "IMAGEKIT_UNIT"
_PREWARM_EOF = "IMAGEKIT_PREWARM"
PREWARM_MIN_SIZE = "1M"  # files smaller than this are few bytes in all and cost a seek each
PREWARM_JOBS = 16  # reads in flight: EBS serves lazily loaded blocks faster the more are asked for at once
_SAFE_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:=,+@-")


def chain_has_venv(loaded: LoadedSpec, image: str) -> bool:
    """Whether some layer of the image's chain creates the virtualenv at VENV (as the Dockerfile's ENV line does)."""
    for name, _ in loaded.chain(image):
        steps = layer_steps(loaded, name)
        if steps.pip_work or "venv" in steps.phases:
            return True
    return False


def service_environment(loaded: LoadedSpec, image: str) -> dict[str, str]:
    """The service's environment: the chain's env, plus VIRTUAL_ENV and the venv's bin first on PATH when it has one."""
    env = dict(loaded.resolved(image).env)
    if chain_has_venv(loaded, image):
        env["VIRTUAL_ENV"] = VENV
        path = env.get("PATH", DEFAULT_PATH)
        if not path.startswith(f"{VENV}/bin:"):
            env["PATH"] = f"{VENV}/bin:{path}"
    return dict(sorted(env.items()))


def service_exec(loaded: LoadedSpec, image: str) -> list[str] | None:
    """The unit's ExecStart argv: a leading python* becomes an absolute interpreter, other names go through env."""
    command = loaded.resolved(image).command
    if not command:
        return None
    exe, *args = command
    if exe.startswith("python") and "/" not in exe:
        if chain_has_venv(loaded, image):
            exe = f"{VENV}/bin/python"
        else:
            exe = "/usr/bin/python3" if exe in ("python", "python3") else f"/usr/bin/{exe}"
        return [exe, *args]
    if exe.startswith("/"):
        return [exe, *args]
    # systemd wants an absolute path; /usr/bin/env finds the name on the unit's PATH (the venv's bin first)
    return ["/usr/bin/env", exe, *args]


def _sd_escape(text: str, *, dollar: bool) -> str:
    """Escape for inside a double-quoted systemd value: C escapes, %% for specifiers, $$ where $ expands (ExecStart)."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    out = out.replace("%", "%%")
    return out.replace("$", "$$") if dollar else out


def _exec_word(word: str) -> str:
    if word and set(word) <= _SAFE_WORD:
        return word
    return '"' + _sd_escape(word, dollar=True) + '"'


def render_service_unit(loaded: LoadedSpec, image: str) -> str | None:
    """The systemd unit that starts the image's command at boot, from its resolved chain; None without a command."""
    argv = service_exec(loaded, image)
    if argv is None:
        return None
    res = loaded.resolved(image)
    lines = [
        f"# Written by imagekit: spec {loaded.spec.name}, image {image}. The AMI's counterpart of the Dockerfile's",
        "# final stage (USER, ENV, WORKDIR, CMD): it starts the service at boot.",
        "[Unit]",
        f"Description=imagekit {loaded.spec.name} image {image}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
    ]
    if res.user:
        lines.append(f"User={res.user}")
    else:
        lines += [f"User={NONROOT_ID}", f"Group={NONROOT_ID}"]
    for key, value in service_environment(loaded, image).items():
        lines.append('Environment="' + _sd_escape(f"{key}={value}", dollar=False) + '"')
    if res.workdir:
        lines.append(f"WorkingDirectory={res.workdir}")
    if loaded.spec.aws.prewarm:
        # `+`: as root whatever User= says; the script never fails the start (a slow first load beats none)
        lines.append(f"ExecStartPre=+/bin/sh {prewarm_paths(image)[0]}")
    lines += [
        "ExecStart=" + " ".join(_exec_word(w) for w in argv),
        "Restart=on-failure",
        "RestartSec=5",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def render_prewarm_script(loaded: LoadedSpec, image: str) -> str | None:
    """The pre-read step (aws.prewarm): every file over PREWARM_MIN_SIZE under the image's weights and the venv, read
    once with PREWARM_JOBS in parallel; it writes seconds, files and bytes as JSON ($1, default prewarm_paths[1])."""
    if not loaded.spec.aws.prewarm:
        return None
    paths = sorted({m.dest for _, layer in loaded.chain(image) for m in layer.models} | {VENV})
    result = prewarm_paths(image)[1]
    return "\n".join(
        [
            "#!/bin/sh",
            f"# Written by imagekit: spec {loaded.spec.name}, image {image}. Runs before the service (ExecStartPre).",
            "# An EBS volume made from a snapshot fetches each block from S3 on its first read: read the weights and",
            "# the venv's large libraries once, many at a time, so the first model load reads from a warm volume.",
            "set -u",
            f'out="${{1:-{result}}}"',
            'list="$(mktemp)"',
            "t0=$(date +%s%N)",
            f'find {" ".join(_q(p) for p in paths)} -type f -size +{PREWARM_MIN_SIZE} 2>/dev/null >"$list"',
            'files=$(wc -l <"$list")',
            "bytes=$(tr '\\n' '\\0' <\"$list\" | xargs -0 -r stat -c %s | awk '{s += $1} END {print s + 0}')",
            f"tr '\\n' '\\0' <\"$list\" | xargs -0 -r -P {PREWARM_JOBS} -n 4 cat >/dev/null 2>&1",
            "t1=$(date +%s%N)",
            'rm -f "$list"',
            'mkdir -p "$(dirname "$out")"',
            'seconds=$(awk -v a="$t0" -v b="$t1" \'BEGIN {printf "%.3f", (b - a) / 1e9}\')',
            'printf \'{"seconds": %s, "files": %s, "bytes": %s}\\n\' "$seconds" "$files" "$bytes" >"$out"',
            'echo "imagekit prewarm: $files files, $bytes bytes in ${seconds}s"',
            "exit 0",
            "",
        ]
    )


def _q(text: str) -> str:
    return shlex.quote(text)


def render_service_install(loaded: LoadedSpec, image: str) -> str | None:
    """Shell that writes the image's unit and enables it by its wants symlink (no running systemd needed); None
    without a command. Run as root once, after the leaf layer's script."""
    unit = render_service_unit(loaded, image)
    if unit is None:
        return None
    path = service_unit_path(image)
    name = path.rsplit("/", 1)[1]
    lines = [
        "set -eu",
        f"mkdir -p {WANTS_DIR}",
        # a quoted here-document: the unit's text is written as is, with no expansion by the shell
        f"cat > {path}.tmp <<'{_UNIT_EOF}'",
        *unit.rstrip("\n").split("\n"),
        _UNIT_EOF,
        f"chmod 0644 {path}.tmp",
        f"mv -f {path}.tmp {path}",
        # what `systemctl enable` does for WantedBy=multi-user.target
        f"ln -sfn {path} {WANTS_DIR}/{name}",
        f"echo 'imagekit: installed and enabled {path}'",
    ]
    prewarm = render_prewarm_script(loaded, image)
    if prewarm is not None:
        script = prewarm_paths(image)[0]
        lines[-1:-1] = [
            f"mkdir -p {script.rsplit('/', 1)[0]}",
            f"cat > {script} <<'{_PREWARM_EOF}'",
            *prewarm.rstrip("\n").split("\n"),
            _PREWARM_EOF,
            f"chmod 0755 {script}",
        ]
    return "\n".join(lines) + "\n"
