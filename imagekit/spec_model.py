"""The spec's model: frozen pydantic models of `imagekit.yaml` version 1, the resolved chain and LoadedSpec.

imagekit.spec reads and checks the file (the only YAML reader) and re-exports these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from imagekit.yamlsrc import Located

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def display_path(path: Path) -> str:
    """A path relative to the current folder when it is under it, else absolute."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def _version(value: Any) -> Any:
    # YAML reads `python: 3.10` as the float 3.1; refuse floats instead of silently building the wrong thing.
    if isinstance(value, bool):
        raise ValueError("expected a version string")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        raise ValueError(f'write versions as quoted strings such as "3.10": YAML read this one as the number {value}')
    return value


Version = Annotated[str, BeforeValidator(_version), Field(min_length=1, max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, populate_by_name=True)


class AmiFilter(_Model):
    """Which AMI the root layer starts from on AWS: a name filter and owners, newest wins."""

    name: str = Field(min_length=1)
    owners: tuple[str, ...] = Field(min_length=1)
    architecture: Literal["x86_64", "arm64"] = "x86_64"


class Bootstrap(_Model):
    """A base made with no registry: debootstrap of a distribution suite, then `docker import`."""

    distro: Literal["debian", "ubuntu"] = "debian"
    suite: str = Field(min_length=1, pattern=r"^[a-z0-9-]+$")
    mirror: str = ""
    packages: tuple[str, ...] = ()


class From(_Model):
    """Where the root layer starts: a container image, an AMI filter, and/or a bootstrap base."""

    docker: str | None = Field(default=None, min_length=1)
    ami: AmiFilter | None = None
    bootstrap: Bootstrap | None = None


class CopyItem(_Model):
    """A file or folder from next to the spec, copied into the image."""

    src: str = Field(min_length=1)
    dest: str = Field(min_length=1)


class ModelFile(_Model):
    """A model weights file, pinned by sha256; src is a local path, https:// or s3://."""

    src: str = Field(min_length=1)
    dest: str = Field(min_length=1)
    sha256: str

    @field_validator("sha256", mode="before")
    @classmethod
    def _sha(cls, value: Any) -> Any:
        if isinstance(value, str) and not SHA256_RE.match(value.lower()):
            raise ValueError(f"sha256 must be 64 hex digits, got {len(value)} characters")
        return value.lower() if isinstance(value, str) else value

    @property
    def is_remote(self) -> bool:
        """True for https:// and s3:// sources."""
        return self.src.startswith(("https://", "s3://", "http://"))


class Refresh(_Model):
    """Rebuild the layer once its last build is older than this, to pick up distro security updates."""

    every_days: int = Field(ge=1, le=3650)


class Budget(_Model):
    """A size gate: growth against the last verified build, and/or an absolute size."""

    max_growth_pct: float | None = Field(default=None, ge=0)
    max_bytes: int | None = Field(default=None, ge=1)


class Layer(_Model):
    """One layer of the chain. Any layer may set any key; the chain resolves them root first."""

    parent: str | None = None
    from_: From | None = Field(default=None, alias="from")
    cuda: Version | None = None
    cudnn: Version | None = None
    driver: Version | None = None
    apt: tuple[str, ...] = ()
    python: Version | None = None
    torch: Version | None = None
    requirements: str | None = None
    pip: tuple[str, ...] = ()
    copy_: tuple[CopyItem, ...] = Field(default=(), alias="copy")
    models: tuple[ModelFile, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    run: tuple[str, ...] = ()
    user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    workdir: str | None = None
    command: tuple[str, ...] | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    refresh: Refresh | None = None
    budget: Budget | None = None

    @field_validator("apt", mode="after")
    @classmethod
    def _apt_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.match(r"^[a-z0-9][a-z0-9.+-]*(=[A-Za-z0-9.+:~-]+)?$", name):
                raise ValueError(f"{name!r} is not a Debian package name")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, val in value.items():
                if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                    raise ValueError(f"{key!r} is not an environment variable name")
                if isinstance(val, bool) or not isinstance(val, str | int | float):
                    raise ValueError(f"env {key} must be a string")
                out[key] = str(val)
            return out
        return value


class Health(_Model):
    """The service's readiness endpoint and how long to wait for it."""

    path: str = Field(default="/ready", pattern=r"^/")
    timeout: float = Field(default=600, gt=0)
    interval: float = Field(default=1.0, gt=0)


class Expect(_Model):
    """What a smoke response must look like."""

    status: int = Field(default=200, ge=100, le=599)
    min_bytes: int = Field(default=1, ge=0)
    content_type: str | None = None
    reference: str | None = None
    tolerance: float = Field(default=0.02, ge=0)
    max_latency_ms: float | None = Field(default=None, gt=0)


class Smoke(_Model):
    """One inference request whose output is checked, and optionally compared with a reference."""

    method: Literal["GET", "POST", "PUT"] = "POST"
    path: str = Field(pattern=r"^/")
    json_: Any = Field(default=None, alias="json")
    headers: dict[str, str] = Field(default_factory=dict)
    expect: Expect = Field(default_factory=Expect)


class Verify(_Model):
    """Boot-and-verify policy."""

    gpu: Literal["required", "optional"] = "required"
    health: Health | None = None
    smoke: Smoke | None = None
    instance_type: str | None = None
    timeout: float = Field(default=1800, gt=0)


class Image(_Model):
    """A buildable image: the chain ending at `leaf`, for the listed targets."""

    leaf: str
    targets: tuple[Literal["docker", "ami"], ...] = Field(default=("docker",), min_length=1)
    verify: Verify | None = None
    repository: str | None = None
    budget: Budget | None = None
    keep: int | None = Field(default=None, ge=1)


class Aws(_Model):
    """Settings of the AMI target."""

    region: str = "us-east-1"
    ami_regions: tuple[str, ...] = ()
    encrypted: bool = False
    kms_key_id: str | None = None
    instance_type: str = "g5.xlarge"
    subnet_id: str | None = None
    security_group_id: str | None = None
    ssh_interface: Literal["public_ip", "private_ip", "session_manager"] = "public_ip"
    ssh_username: str = "ubuntu"
    volume_size: int = Field(default=100, ge=8)
    tags: dict[str, str] = Field(default_factory=dict)


class Build(_Model):
    """Build inputs that are not part of any layer's content."""

    wheelhouse: str | None = None
    pip_index_url: str | None = None
    ca_bundle: str | None = None


class Signing(_Model):
    """Where the signing key and the trust file are."""

    key: str | None = None
    trust: str = "imagekit.trust.yaml"


class Retention(_Model):
    """How many builds of each image gc keeps."""

    keep: int = Field(default=5, ge=1)


class Spec(_Model):
    """A whole validated spec."""

    version: Literal[1]
    name: str = Field(pattern=NAME_RE.pattern)
    layers: dict[str, Layer] = Field(min_length=1)
    images: dict[str, Image] = Field(min_length=1)
    verify: Verify = Field(default_factory=Verify)
    aws: Aws = Field(default_factory=Aws)
    build: Build = Field(default_factory=Build)
    signing: Signing = Field(default_factory=Signing)
    store: str = "manifests"
    retention: Retention = Field(default_factory=Retention)


@dataclass(frozen=True)
class Resolved:
    """What a chain resolves to: the effective pins, checked and rendered."""

    cuda: str
    cudnn: str | None
    driver: str | None
    python: str | None
    torch: str | None
    user: str | None
    command: tuple[str, ...] | None
    port: int | None
    workdir: str | None
    env: dict[str, str]


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec together with where it came from."""

    spec: Spec
    path: Path
    text: str
    located: Located

    @property
    def file(self) -> str:
        """The spec's path as messages show it: relative to the current folder when under it."""
        return display_path(self.path)

    @property
    def root(self) -> Path:
        """The folder the spec's relative paths are relative to."""
        return self.path.parent

    def line_of(self, *key: str | int) -> int:
        """The line of a key path in the spec file."""
        return self.located.line_of(tuple(key))

    def chain(self, image: str) -> list[tuple[str, Layer]]:
        """Layers of an image's chain, root first."""
        return chain_of(self.spec, self.spec.images[image].leaf)

    def resolved(self, image: str) -> Resolved:
        """The effective pins of an image's chain."""
        return resolve_chain(self.chain(image))

    def verify_for(self, image: str) -> Verify:
        """The verify policy of an image (its own, else the top-level one)."""
        return self.spec.images[image].verify or self.spec.verify

    def local(self, rel: str) -> Path:
        """A spec-relative path as an absolute one."""
        return (self.root / rel).resolve()


def chain_of(spec: Spec, leaf: str) -> list[tuple[str, Layer]]:
    """The chain leaf -> parent -> ... -> root, returned root first."""
    out: list[tuple[str, Layer]] = []
    seen: set[str] = set()
    name: str | None = leaf
    while name is not None:
        if name in seen:
            raise ValueError(f"parent cycle at {name}")
        seen.add(name)
        layer = spec.layers[name]
        out.append((name, layer))
        name = layer.parent
    return list(reversed(out))


def resolve_chain(chain: list[tuple[str, Layer]]) -> Resolved:
    """Fold a chain root first: later layers override scalars, env merges."""
    vals: dict[str, Any] = {"cuda": "none", "env": {}}
    for _, layer in chain:
        for key in ("cuda", "cudnn", "driver", "python", "torch", "user", "command", "port", "workdir"):
            value = getattr(layer, key)
            if value is not None:
                vals[key] = value
        vals["env"] = {**vals["env"], **layer.env}
    return Resolved(
        cuda=vals["cuda"],
        cudnn=vals.get("cudnn"),
        driver=vals.get("driver"),
        python=vals.get("python"),
        torch=vals.get("torch"),
        user=vals.get("user"),
        command=vals.get("command"),
        port=vals.get("port"),
        workdir=vals.get("workdir"),
        env=vals["env"],
    )
