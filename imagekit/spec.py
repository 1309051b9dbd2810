"""The layered spec (`imagekit.yaml`, version 1): frozen models and `load_spec`, the only YAML reader."""

from __future__ import annotations

import difflib
import math
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from imagekit.errors import Problem, SpecError
from imagekit.inputs import MAX_INPUT_BYTES, clip, read_regular
from imagekit.yamlsrc import KeyPath, Located, YamlSyntaxError, load_located

SPEC_FILENAME = "imagekit.yaml"
MAX_SPEC_BYTES = MAX_INPUT_BYTES
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# a day: longer than any boot or smoke test, short enough to be a number every tool can sleep for
MAX_TIMEOUT = 86400
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


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


def _not_bool(value: Any) -> Any:
    # pydantic reads true as 1 in lax mode: `port: true` would become EXPOSE 1
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


def _spec_version(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"the spec version is the number 1, got {str(value).lower()}")
    return value


def _finite(value: Any) -> Any:
    # `.inf` and `.nan` are valid YAML floats but no usable timeout, size or tolerance
    value = _not_bool(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Num = Annotated[float, BeforeValidator(_finite)]
SpecVersion = Annotated[Literal[1], BeforeValidator(_spec_version)]


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

    docker: str | None = Field(default=None, min_length=1, max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
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

    every_days: Int = Field(ge=1, le=3650)


class Budget(_Model):
    """A size gate: growth against the last verified build, and/or an absolute size."""

    max_growth_pct: Num | None = Field(default=None, ge=0)
    max_bytes: Int | None = Field(default=None, ge=1)


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


class Verify(_Model):
    """Boot-and-verify policy."""

    gpu: Literal["required", "optional"] = "required"
    health: Health | None = None
    smoke: Smoke | None = None
    instance_type: str | None = None
    timeout: Num = Field(default=1800, gt=0, le=MAX_TIMEOUT)


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


# --- loading -------------------------------------------------------------------------------------------


def _fields_of(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model whose keys live at a location, to suggest a close key name."""
    model: type[BaseModel] | None = Spec
    i = 0
    while model is not None and i < len(loc):
        key = loc[i]
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == key), None)
        if field is None:
            return None
        model, nested = _held_model(field.annotation)
        # a dict[str, Model] or tuple[Model, ...] takes one more step in the location: the key or the index
        i += 2 if nested else 1
    return model


def _held_model(ann: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model an annotation holds, and whether it sits inside a dict or tuple; Optional is seen through."""
    origin = get_origin(ann)
    if origin in (Union, UnionType):
        for arg in get_args(ann):
            if arg is not type(None):
                found, nested = _held_model(arg)
                if found is not None:
                    return found, nested
        return None, False
    if origin in (dict, tuple, list):
        for arg in get_args(ann):
            found, _ = _held_model(arg)
            if found is not None:
                return found, True
        return None, False
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann, False
    return None, False


def _loc_str(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _clean_loc(loc: tuple[Any, ...], data: Any = None) -> tuple[str | int, ...]:
    # pydantic puts union member names and validator tags in loc; drop what is not a real key. A part that the
    # document really has at that point is a key even when it is named like a tag (a user's key "str").
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
            continue
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
            continue
        if isinstance(part, str) and (
            part.startswith(("function-", "literal[", "json-or-python", "[key]"))
            or part
            in {
                "str",
                "int",
                "float",
                "bool",
                "list[str]",
                "tuple[str, ...]",
                "none",
                "dict[str,str]",
            }
        ):
            continue
        out.append(part)
        node = None
    return tuple(out)


# Bounds on what a spec may hold, so every command refuses the same oversized input before any work.
MAX_STRING = 4096
MAX_SCRIPT = 65536  # a `run` entry is shell, and may be a long one
MAX_ITEMS = 10_000  # layers, images, list entries, env keys
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every C0 control but tab, and DEL
# Where a value is a statement on one line (Dockerfile, systemd unit, shell assignment), a newline starts a new one.
# Only `run` entries (shell that runs as written) and the smoke request body may hold newlines; NUL is never allowed.
_MULTILINE = ("run",)


def _check_text(located: Located, file: str) -> list[Problem]:
    """Problems with the raw values: NUL or control characters, oversized strings and collections."""
    problems: list[Problem] = []

    def bad(path: KeyPath, message: str, hint: str = "") -> None:
        problems.append(Problem(file, located.line_of(path), _loc_str(path), message, hint))

    def check_str(path: KeyPath, text: str, *, multiline: bool, is_key: bool = False) -> None:
        what = "key" if is_key else "value"
        if "\x00" in text:
            bad(path, f"the {what} contains a NUL byte", "remove it")
        elif not multiline and _CONTROL.search(text):
            char = _CONTROL.search(text)
            assert char is not None
            bad(
                path,
                f"the {what} contains the control character '{clip(char.group())}'",
                "rendered files take this value as one line of a statement (a line break would start a new one); "
                "keep it to one printable line",
            )
        limit = MAX_SCRIPT if multiline else MAX_STRING
        if len(text) > limit:
            bad(path, f"the {what} is {len(text)} characters long; the limit is {limit}")

    # an explicit stack: a document nests at most yamlsrc.MAX_DEPTH levels, but keep this loop free of recursion
    stack: list[tuple[KeyPath, Any, bool, bool]] = [((), located.data, False, False)]
    while stack:
        path, node, multiline, free = stack.pop()
        if isinstance(node, dict):
            if len(node) > MAX_ITEMS:
                bad(path, f"{len(node)} entries; the limit is {MAX_ITEMS}")
            for key, value in node.items():
                child = (*path, key if isinstance(key, str | int) else str(key))
                if isinstance(key, str) and not free:
                    check_str(child, key, multiline=False, is_key=True)
                in_json = free or (key == "json" and len(path) >= 2 and path[-1] == "smoke")
                stack.append((child, value, multiline or (key in _MULTILINE and not free), in_json))
        elif isinstance(node, list):
            if len(node) > MAX_ITEMS:
                bad(path, f"{len(node)} entries; the limit is {MAX_ITEMS}")
            stack.extend(((*path, i), item, multiline, free) for i, item in enumerate(node))
        elif isinstance(node, str):
            if free:
                if "\x00" in node:
                    bad(path, "the value contains a NUL byte", "remove it")
            else:
                check_str(path, node, multiline=multiline)
    return problems


def _pydantic_problems(exc: ValidationError, file: str, located: Located) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(tuple(err["loc"]), located.data)
        etype = err["type"]
        hint = ""
        if etype == "extra_forbidden" and loc:
            parent = _model_at(loc[:-1])
            known = _fields_of(parent) if parent else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else (f"known keys: {', '.join(known)}" if known else "")
            message = "unknown key"
        elif etype == "missing":
            message = "required key is missing"
        elif etype == "literal_error":
            msg = str(err["msg"])
            # only the first letter: the expected values themselves are case-sensitive ('POST', not 'post')
            message = f"{msg[:1].lower()}{msg[1:]}, got {clip(repr(err.get('input')))}"
        elif etype == "value_error":
            message = str(err["msg"]).removeprefix("Value error, ")
        else:
            message = str(err["msg"])
            message = message[:1].lower() + message[1:]  # pydantic capitalises; the rest of the line is lowercase
            if "input" in err and etype.endswith("_type"):
                message += f", got {type(err['input']).__name__}"
        line = located.line_of(loc)
        problems.append(Problem(file, line, _loc_str(loc), message, hint))
    return problems


def _check_graph(spec: Spec, file: str, located: Located) -> list[Problem]:
    problems: list[Problem] = []
    names = list(spec.layers)
    roots = []
    for name, layer in spec.layers.items():
        if not NAME_RE.match(name):
            problems.append(
                Problem(
                    file,
                    located.line_of(("layers", name)),
                    f"layers.{name}",
                    "layer names are lowercase letters, digits, '.', '_' and '-'",
                )
            )
        if layer.parent is None:
            roots.append(name)
            if layer.from_ is None:
                problems.append(
                    Problem(
                        file,
                        located.line_of(("layers", name)),
                        f"layers.{name}",
                        "a root layer (no parent) needs 'from'",
                    )
                )
            elif not (layer.from_.docker or layer.from_.ami or layer.from_.bootstrap):
                problems.append(
                    Problem(
                        file,
                        located.line_of(("layers", name, "from")),
                        f"layers.{name}.from",
                        "needs one of docker, ami or bootstrap",
                    )
                )
        else:
            if layer.from_ is not None:
                problems.append(
                    Problem(
                        file,
                        located.line_of(("layers", name, "from")),
                        f"layers.{name}.from",
                        f"only a root layer has 'from'; this one has parent {layer.parent!r}",
                    )
                )
            if layer.parent not in spec.layers:
                close = difflib.get_close_matches(layer.parent, names, n=1)
                problems.append(
                    Problem(
                        file,
                        located.line_of(("layers", name, "parent")),
                        f"layers.{name}.parent",
                        f"unknown parent {layer.parent!r}",
                        f"did you mean {close[0]!r}?" if close else f"layers: {', '.join(names)}",
                    )
                )
    # cycles: each layer is walked once (linear in the number of layers, however long the chains)
    done: set[str] = set()
    for start in names:
        walk: dict[str, int] = {}
        order: list[str] = []
        cur: str | None = start
        while cur is not None and cur in spec.layers and cur not in done:
            if cur in walk:
                members = order[walk[cur] :]
                for i, member in enumerate(members):
                    cycle = " -> ".join([*members[i:], *members[:i], member])
                    problems.append(
                        Problem(
                            file,
                            located.line_of(("layers", member, "parent")),
                            f"layers.{member}.parent",
                            f"parent cycle: {cycle}",
                        )
                    )
                break
            walk[cur] = len(order)
            order.append(cur)
            cur = spec.layers[cur].parent
        done.update(order)
    for name, image in spec.images.items():
        if not NAME_RE.match(name):
            problems.append(
                Problem(
                    file,
                    located.line_of(("images", name)),
                    f"images.{name}",
                    "image names are lowercase letters, digits, '.', '_' and '-'",
                )
            )
        if image.leaf not in spec.layers:
            close = difflib.get_close_matches(image.leaf, names, n=1)
            problems.append(
                Problem(
                    file,
                    located.line_of(("images", name, "leaf")),
                    f"images.{name}.leaf",
                    f"unknown layer {image.leaf!r}",
                    f"did you mean {close[0]!r}?" if close else f"layers: {', '.join(names)}",
                )
            )
        root = _root_of(spec, image.leaf)
        if root is not None and "docker" in image.targets:
            base = root[1].from_
            if base is not None and not (base.docker or base.bootstrap):
                problems.append(
                    Problem(
                        file,
                        located.line_of(("images", name, "targets")),
                        f"images.{name}.targets",
                        f"the docker target needs a container base, but root layer {root[0]!r} has only from.ami",
                        "add from.docker or from.bootstrap to it, or drop docker from targets",
                    )
                )
        if len(set(image.targets)) != len(image.targets):
            problems.append(
                Problem(
                    file,
                    located.line_of(("images", name, "targets")),
                    f"images.{name}.targets",
                    "a target is listed twice",
                )
            )
    return problems


# Weights land read-only and root-owned; under these they would replace what the system runs or trusts.
SYSTEM_PATHS = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run", "/sbin",
    "/sys", "/usr/bin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/sbin", "/usr/include",
    "/usr/share/ca-certificates", "/var/lib/apt", "/var/lib/dpkg", "/tmp",  # noqa: S108 - refused, not used
)  # fmt: skip


def system_path(dest: str) -> str | None:
    """The system folder a destination lies in (after normalising `..`), or None; `/` itself counts."""
    norm = posixpath.normpath("/" + dest.lstrip("/"))
    if norm == "/":
        return "/"
    for prefix in SYSTEM_PATHS:
        if norm == prefix or norm.startswith(prefix + "/"):
            return prefix
    return None


def _root_of(spec: Spec, leaf: str) -> tuple[str, Layer] | None:
    """The root layer of a chain, or None when the chain is broken (unknown parent, cycle: reported elsewhere)."""
    seen: set[str] = set()
    name = leaf
    while name in spec.layers and name not in seen:
        seen.add(name)
        parent = spec.layers[name].parent
        if parent is None:
            return name, spec.layers[name]
        name = parent
    return None


def _check_store(spec: Spec, root: Path, file: str, located: Located) -> list[Problem]:
    """`store:` is a folder or s3://bucket/prefix; a URL with credentials in it is refused by every command."""
    url = spec.store
    line = located.line_of(("store",))
    if url.startswith("s3://"):
        if not url[len("s3://") :].partition("/")[0]:
            return [Problem(file, line, "store", f"store {clip(url)!r}: expected s3://bucket/prefix")]
        return []
    if "://" in url:
        scheme = url.split("://", 1)[0]
        hint = "credentials do not belong in the spec; " if "@" in url.split("://", 1)[1].split("/", 1)[0] else ""
        return [
            Problem(
                file,
                line,
                "store",
                f"store scheme {clip(scheme)!r} is not supported",
                f"{hint}use a folder or s3://bucket/prefix",
            )
        ]
    if not url.strip():
        return [Problem(file, line, "store", "store is empty", "use a folder or s3://bucket/prefix")]
    folder = posixpath.normpath(posixpath.join(str(root), url)) if not url.startswith("~") else url
    if folder == "/" or folder in _SYSTEM_FOLDERS or folder.startswith(("/proc/", "/sys/", "/dev/")):
        # every command would list (and plan would walk) the whole of it
        return [Problem(file, line, "store", f"store {clip(url)!r} is a system folder", "use a folder of its own")]
    return []


_SYSTEM_FOLDERS = frozenset(
    {"/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys",
     "/tmp", "/usr", "/var"}  # noqa: S108 - refused, not used
)  # fmt: skip


def _escapes(root: Path, rel: str) -> bool:
    if Path(rel).is_absolute():
        return True
    try:
        (root / rel).resolve().relative_to(root.resolve())
    except ValueError:
        return True
    return False


def _check_paths(spec: Spec, root: Path, file: str, located: Located) -> list[Problem]:
    problems: list[Problem] = []

    def bad(path: tuple[str | int, ...], message: str, hint: str = "") -> None:
        problems.append(Problem(file, located.line_of(path), _loc_str(path), message, hint))

    for name, layer in spec.layers.items():
        base: tuple[str | int, ...] = ("layers", name)
        for i, item in enumerate(layer.copy_):
            if _escapes(root, item.src):
                bad(
                    (*base, "copy", i, "src"),
                    f"{item.src!r} escapes the spec's folder",
                    "keep sources next to imagekit.yaml",
                )
            if not item.dest.startswith("/"):
                bad((*base, "copy", i, "dest"), f"destination {item.dest!r} is not absolute")
        for i, model in enumerate(layer.models):
            if not model.is_remote and _escapes(root, model.src):
                bad(
                    (*base, "models", i, "src"),
                    f"{model.src!r} escapes the spec's folder",
                    "keep weights next to imagekit.yaml, or use https:// or s3://",
                )
            if model.src.startswith("http://"):
                bad((*base, "models", i, "src"), "plain http:// is not allowed for weights", "use https://")
            if not model.dest.startswith("/"):
                bad((*base, "models", i, "dest"), f"destination {model.dest!r} is not absolute")
            elif shadowed := system_path(model.dest):
                bad(
                    (*base, "models", i, "dest"),
                    f"destination {clip(model.dest)!r} would replace a system path ({shadowed})",
                    "put weights under /opt, /srv or /models",
                )
        if layer.requirements is not None and _escapes(root, layer.requirements):
            bad((*base, "requirements"), f"{layer.requirements!r} escapes the spec's folder")
        if layer.workdir is not None and not layer.workdir.startswith("/"):
            bad((*base, "workdir"), f"workdir {layer.workdir!r} is not absolute")
    for name, image in spec.images.items():
        verify = image.verify or spec.verify
        ref = verify.smoke.expect.reference if verify.smoke else None
        if ref is not None and _escapes(root, ref):
            where = ("images", name, "verify") if image.verify else ("verify",)
            bad((*where, "smoke", "expect", "reference"), f"{ref!r} escapes the spec's folder")
    return problems


def display_path(path: Path) -> str:
    """A path relative to the current folder when it is under it, else absolute."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def parse_spec(text: str, path: Path) -> LoadedSpec:
    """Validate spec text that was read from `path`; raises SpecError listing every problem."""
    file = display_path(path)
    try:
        located = load_located(text)
    except YamlSyntaxError as exc:
        raise SpecError([Problem(file, exc.line, "", f"YAML syntax error: {exc.message}")]) from None
    problems = [
        Problem(file, line, _loc_str(key), "key is given twice", "YAML keeps only the last one")
        for key, line in located.duplicates
    ]
    data = located.data
    if not isinstance(data, dict):
        raise SpecError(
            [
                *problems,
                Problem(file, 1, "", "the spec must be a YAML mapping with version, name, layers and images"),
            ]
        )
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise SpecError([*problems, *(Problem(file, 1, "", f"key {k!r} is not a string") for k in bad_keys)])
    problems += _check_text(located, file)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError([*problems, *_pydantic_problems(exc, file, located)]) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise SpecError([*problems, Problem(file, 1, "", f"cannot read the spec: {exc}")]) from None
    problems += _check_graph(spec, file, located)
    problems += _check_paths(spec, path.parent, file, located)
    problems += _check_store(spec, path.parent, file, located)
    if problems:
        raise SpecError(problems)
    return LoadedSpec(spec=spec, path=path, text=text, located=located)


def find_spec(path: Path | str | None) -> Path:
    """The spec path for `-f`: the given file, or imagekit.yaml in the current folder."""
    candidate = Path(path) if path else Path.cwd() / SPEC_FILENAME
    try:
        if candidate.is_dir():
            candidate = candidate / SPEC_FILENAME
    except OSError:
        pass  # a name the kernel refuses (too long): reading it below says so
    return candidate


def load_spec(path: Path | str | None = None) -> LoadedSpec:
    """Read and validate a spec file; raises SpecError with file:line problems."""
    spec_path = find_spec(path)
    try:
        raw = read_regular(spec_path, what="spec", limit=MAX_SPEC_BYTES)
    except FileNotFoundError:
        raise SpecError(
            [
                Problem(
                    clip(str(spec_path)),
                    0,
                    "",
                    "no such file",
                    "pass -f FILE or run in a folder with imagekit.yaml",
                )
            ]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError([Problem(clip(str(spec_path)), line, "", "not UTF-8 text")]) from None
    return parse_spec(text, spec_path.absolute())
