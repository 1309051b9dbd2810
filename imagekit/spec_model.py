"""The spec's model: frozen pydantic models of `imagekit.yaml` version 1, the resolved chain and LoadedSpec.

imagekit.spec reads and checks the file (the only YAML reader) and re-exports these names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field, field_validator, model_validator

from imagekit.spec_types import Int, Num, SpecModel, SpecVersion, Version
from imagekit.yamlsrc import Located

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# a day: longer than any boot or smoke test, short enough to be a number every tool can sleep for
MAX_TIMEOUT = 86400
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def display_path(path: Path) -> str:
    """A path relative to the current folder when it is under it, else absolute."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


_Model = SpecModel


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

    docker: str | None = Field(default=None, min_length=1, max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
    ami: AmiFilter | None = None
    bootstrap: Bootstrap | None = None


class CopyItem(_Model):
    """A file or folder from next to the spec, copied into the image."""

    src: str = Field(min_length=1)
    dest: str = Field(min_length=1)


class ModelSignatureRef(_Model):
    """An OpenSSF model-signing bundle over the weights and the public key (PEM) that must have made it."""

    bundle: str = Field(min_length=1)
    key: str = Field(min_length=1)


class ModelFile(_Model):
    """A model weights file, pinned by sha256; src is a local path, https:// or s3://."""

    src: str = Field(min_length=1)
    dest: str = Field(min_length=1)
    sha256: str = Field(json_schema_extra={"pattern": "^[0-9a-fA-F]{64}$"})
    # e.g. "0600": the file is then owned by the image's user (readable by it, writable by nobody else);
    # without it weights are root-owned 0444
    mode: str | None = Field(default=None, pattern=r"^0?[0-7]{3}$")
    # the build refuses the weights unless this signature verifies with this key (before anything is built)
    signature: ModelSignatureRef | None = None

    @field_validator("mode", mode="after")
    @classmethod
    def _mode(cls, value: str | None) -> str | None:
        if value is None:
            return None
        bits = int(value, 8)
        if bits & 0o400 == 0:
            raise ValueError(f"mode {value} does not let the owner (the image's user) read the weights")
        if bits & 0o022:
            raise ValueError(f"mode {value} lets group or others write the weights; use 0600, 0400, 0640 or 0444")
        return f"0{bits:03o}"

    @field_validator("sha256", mode="before")
    @classmethod
    def _sha(cls, value: Any) -> Any:
        if isinstance(value, str) and not SHA256_RE.fullmatch(value.lower()):
            raise ValueError(f"sha256 must be 64 hex digits, got {len(value)} characters")
        return value.lower() if isinstance(value, str) else value

    @property
    def is_remote(self) -> bool:
        """True for https:// and s3:// sources."""
        return self.src.startswith(("https://", "s3://", "http://"))


class Refresh(_Model):
    """Rebuild the layer once its last build is older than this, to pick up distro security updates."""

    every_days: Int = Field(ge=1, le=3650)


class Budget(_Model):
    """A size gate: growth against the last verified build, and/or an absolute size, and/or the biggest image layer
    (one build step: one blob, downloaded and unpacked as one stream on one core) that may be split."""

    max_growth_pct: Num | None = Field(default=None, ge=0)
    max_bytes: Int | None = Field(default=None, ge=1)
    # no build step of the image (or of this layer) over this many bytes, unpacked; a weights file is one step
    # that cannot be split and is left out
    max_layer_bytes: Int | None = Field(default=None, ge=1)


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
    port: Int | None = Field(default=None, ge=1, le=65535)
    refresh: Refresh | None = None
    budget: Budget | None = None
    # the venv's image layers: each group of package-name globs is installed (and pulled) as a layer of its own,
    # the rest of the lock after them as one more; unset = imagekit's default (the torch stack in three)
    venv_layers: tuple[tuple[str, ...], ...] | None = Field(default=None, max_length=8)

    @field_validator("venv_layers", mode="after")
    @classmethod
    def _venv_globs(cls, value: tuple[tuple[str, ...], ...] | None) -> tuple[tuple[str, ...], ...] | None:
        for group in value or ():
            if not group:
                raise ValueError("a venv layer needs at least one package name glob")
            for glob in group:
                if not re.match(r"^[a-z0-9*][a-z0-9*-]{0,99}$", glob):
                    raise ValueError(f"{glob!r} is not a normalized package name glob (a-z, 0-9, -, *)")
        return value

    @field_validator("apt", mode="after")
    @classmethod
    def _apt_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.fullmatch(r"^[a-z0-9][a-z0-9.+-]*(=[A-Za-z0-9.+:~-]+)?$", name):
                raise ValueError(f"{name!r} is not a Debian package name")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, value: Any) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, val in value.items():
                if not isinstance(key, str) or not re.fullmatch(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                    raise ValueError(f"{key!r} is not an environment variable name")
                if isinstance(val, bool) or not isinstance(val, str | int | float):
                    raise ValueError(f"env {key} must be a string")
                out[key] = str(val)
            return out
        return value


class Health(_Model):
    """The service's readiness endpoint and how long to wait for it."""

    # a URL path: it is written into the HEALTHCHECK command and the verify scripts, so no quotes or spaces
    path: str = Field(default="/ready", pattern=r"^/[A-Za-z0-9._~!$&()*+,;=:@%/?-]*$")
    timeout: Num = Field(default=600, gt=0, le=MAX_TIMEOUT)
    interval: Num = Field(default=1.0, gt=0, le=3600)


class Expect(_Model):
    """What a smoke response must look like."""

    status: Int = Field(default=200, ge=100, le=599)
    min_bytes: Int = Field(default=1, ge=0)
    content_type: str | None = None
    reference: str | None = None
    tolerance: Num = Field(default=0.02, ge=0)
    max_latency_ms: Num | None = Field(default=None, gt=0)


class Smoke(_Model):
    """One inference request whose output is checked, and optionally compared with a reference."""

    method: Literal["GET", "POST", "PUT"] = "POST"
    path: str = Field(pattern=r"^/")
    json_: Any = Field(default=None, alias="json")
    headers: dict[str, str] = Field(default_factory=dict)
    expect: Expect = Field(default_factory=Expect)


Severity = Literal["low", "medium", "high", "critical"]


class Scan(_Model):
    """The vulnerability gate between verify and sign: findings at or above fail_on fail the build unless allowed."""

    fail_on: Literal["low", "medium", "high", "critical", "none"] = "high"
    # finding id (CVE-..., DSA-..., GHSA-...) -> why it is accepted; recorded with each allowed finding
    allow: dict[str, str] = Field(default_factory=dict)
    # true: a scanner of `scanners` that is not installed fails the gate instead of being skipped
    required: bool = False
    scanners: tuple[Literal["debian", "trivy", "grype"], ...] = Field(
        default=("debian", "trivy", "grype"), min_length=1
    )

    @field_validator("allow", mode="after")
    @classmethod
    def _allow(cls, value: dict[str, str]) -> dict[str, str]:
        for key, why in value.items():
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{1,99}$", key):
                raise ValueError(f"{key!r} is not a vulnerability id such as CVE-2026-1234")
            if not str(why).strip():
                raise ValueError(f"allow.{key}: say why it is accepted")
        return value


class Verify(_Model):
    """Boot-and-verify policy."""

    gpu: Literal["required", "optional"] = "required"
    health: Health | None = None
    smoke: Smoke | None = None
    instance_type: str | None = None
    timeout: Num = Field(default=1800, gt=0, le=MAX_TIMEOUT)
    scan: Scan | None = None


class Image(_Model):
    """A buildable image: the chain ending at `leaf`, for the listed targets."""

    leaf: str
    targets: tuple[Literal["docker", "ami"], ...] = Field(default=("docker",), min_length=1)
    verify: Verify | None = None
    repository: str | None = None
    budget: Budget | None = None
    keep: Int | None = Field(default=None, ge=1)


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
    volume_size: Int = Field(default=100, ge=8)
    tags: dict[str, str] = Field(default_factory=dict)
    # before the service starts, read the weights and the venv's large libraries once, in parallel: a volume made
    # from a snapshot fetches each block from S3 on its first read, which otherwise lands on the first model load
    prewarm: bool = False


class Build(_Model):
    """Build inputs that are not part of any layer's content."""

    wheelhouse: str | None = None
    pip_index_url: str | None = None
    ca_bundle: str | None = None
    # the image engine of the docker target: a Docker Engine (BuildKit), or buildah + podman with no daemon
    engine: Literal["docker", "buildah"] = "docker"


class Push(_Model):
    """How `build --push` compresses the image's layers (unset: `docker push`, gzip at Docker's level)."""

    compression: Literal["gzip", "zstd", "zstd:chunked"] | None = None
    level: Int | None = Field(default=None, ge=1, le=22)

    @model_validator(mode="after")
    def _level_fits(self) -> Push:
        if self.level is not None and self.compression in (None, "gzip") and self.level > 9:
            raise ValueError(f"gzip levels are 1-9, not {self.level}")
        return self


class Signing(_Model):
    """Where the signing key and the trust file are."""

    key: str | None = None
    trust: str = "imagekit.trust.yaml"


class Retention(_Model):
    """How many builds of each image gc keeps."""

    keep: Int = Field(default=5, ge=1)


class Spec(_Model):
    """A whole validated spec."""

    version: SpecVersion
    name: str = Field(pattern=NAME_RE.pattern)
    layers: dict[str, Layer] = Field(min_length=1)
    images: dict[str, Image] = Field(min_length=1)
    verify: Verify = Field(default_factory=Verify)
    aws: Aws = Field(default_factory=Aws)
    build: Build = Field(default_factory=Build)
    push: Push = Field(default_factory=Push)
    signing: Signing = Field(default_factory=Signing)
    store: str = "manifests"
    retention: Retention = Field(default_factory=Retention)


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of imagekit.yaml, generated from the models above, for editors and CI."""
    schema = Spec.model_json_schema(by_alias=True)
    # names are checked after the models (so errors can say which one); the schema says the same up front
    for key in ("layers", "images"):
        schema["properties"][key]["propertyNames"] = {"pattern": NAME_RE.pattern}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "imagekit.yaml (version 1)",
        "description": "The layered spec of imagekit: layers (base, runtime, app, ...), images, verify, aws, signing.",
    }


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
    # per-layer facts folded root first, computed once each, so renderers stay linear in the number of layers
    memo: dict[tuple[str, str], Any] = field(default_factory=dict, compare=False, repr=False, hash=False)

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
        return self.resolved_upto(self.spec.images[image].leaf)

    def fold_upto(self, kind: str, layer: str, step: Callable[[Any, Layer], Any]) -> Any:
        """step folded over the chain root .. layer (step(None, root) first), memoised per (kind, layer)."""
        pending: list[str] = []
        name: str | None = layer
        while name is not None and (kind, name) not in self.memo:
            pending.append(name)
            name = self.spec.layers[name].parent
            if len(pending) > len(self.spec.layers):
                raise ValueError(f"parent cycle at {layer}")
        value = self.memo[(kind, name)] if name is not None else None
        for current in reversed(pending):
            value = step(value, self.spec.layers[current])
            self.memo[(kind, current)] = value
        return value

    def resolved_upto(self, layer: str) -> Resolved:
        """The effective pins of the chain that ends at a layer."""
        return cast(Resolved, self.fold_upto("resolved", layer, _fold_layer))

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


_PINNED = ("cuda", "cudnn", "driver", "python", "torch", "user", "command", "port", "workdir")


def _fold_layer(prev: Resolved | None, layer: Layer) -> Resolved:
    """One step of resolving a chain: the layer's scalars override, its env merges over the parent's."""
    vals: dict[str, Any] = (
        {k: getattr(prev, k) for k in _PINNED} if prev is not None else {k: None for k in _PINNED} | {"cuda": "none"}
    )
    for key in _PINNED:
        value = getattr(layer, key)
        if value is not None:
            vals[key] = value
    env = {**prev.env, **layer.env} if prev is not None else dict(layer.env)
    return Resolved(env=env, **vals)


def resolve_chain(chain: list[tuple[str, Layer]]) -> Resolved:
    """Fold a chain root first: later layers override scalars, env merges."""
    out: Resolved | None = None
    for _, layer in chain:
        out = _fold_layer(out, layer)
    return out if out is not None else _fold_layer(None, Layer())
