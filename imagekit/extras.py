"""Optional dependencies: which feature needs which extra, and the one error that says how to install it."""

from __future__ import annotations

import importlib.util
import os

from imagekit.errors import UsageError

# extra -> the modules it provides (checked without importing them, so the check is cheap and side-effect free)
EXTRAS: dict[str, tuple[str, ...]] = {
    # moto's server mode (flask, flask-cors) plays EC2 for `--rehearse`
    "rehearsal": ("moto", "flask", "flask_cors"),
    # the docker SDK reaches ssh:// engines through paramiko, even when it shells out to ssh
    "ssh": ("paramiko",),
}


class MissingExtra(UsageError):
    """A feature was asked for whose optional dependency is not installed (exit 2, with the pip line)."""

    def __init__(self, feature: str, extra: str, modules: list[str]) -> None:
        self.feature = feature
        self.extra = extra
        self.modules = modules
        what = ", ".join(modules)
        super().__init__(f"{feature} needs {what}, not installed here; install with: {install_line(extra)}")


def install_line(extra: str) -> str:
    """The exact command that installs an extra."""
    return f"pip install 'imagekit[{extra}]'"


def missing(extra: str) -> list[str]:
    """The modules of an extra that this interpreter cannot import."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require(extra: str, feature: str) -> None:
    """Raise MissingExtra when a module of `extra` is missing; `feature` names what the user asked for."""
    gone = missing(extra)
    if gone:
        raise MissingExtra(feature, extra, gone)


def require_docker_host(host: str | None = None) -> None:
    """An ssh:// DOCKER_HOST needs the ssh extra; other hosts need nothing more."""
    value = os.environ.get("DOCKER_HOST", "") if host is None else host
    if value.startswith("ssh://"):
        require("ssh", f"DOCKER_HOST={value}")
