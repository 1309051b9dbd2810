"""The layered spec (`imagekit.yaml`, version 1): frozen models and `load_spec`, the only YAML reader."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from imagekit.errors import Problem, SpecError
from imagekit.yamlsrc import Located, YamlSyntaxError, load_located

SPEC_FILENAME = "imagekit.yaml"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
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


Version = Annotated[
    str,
    BeforeValidator(_version),
    Field(min_length=1, max_length=64, description='a quoted version string, e.g. "3.11" (YAML reads 3.10 as 3.1)'),
]


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
    sha256: str = Field(json_schema_extra={"pattern": "^[0-9a-fA-F]{64}$"})

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
            message = f"{err['msg'].lower()}, got {err.get('input')!r}"
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
    # cycles
    for start in names:
        seen: list[str] = []
        cur: str | None = start
        while cur is not None and cur in spec.layers:
            if cur in seen:
                if cur == start:
                    cycle = " -> ".join([*seen, cur])
                    problems.append(
                        Problem(
                            file,
                            located.line_of(("layers", start, "parent")),
                            f"layers.{start}.parent",
                            f"parent cycle: {cycle}",
                        )
                    )
                break
            seen.append(cur)
            cur = spec.layers[cur].parent
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
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError([*problems, *_pydantic_problems(exc, file, located)]) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise SpecError([*problems, Problem(file, 1, "", f"cannot read the spec: {exc}")]) from None
    problems += _check_graph(spec, file, located)
    problems += _check_paths(spec, path.parent, file, located)
    if problems:
        raise SpecError(problems)
    return LoadedSpec(spec=spec, path=path, text=text, located=located)


def find_spec(path: Path | str | None) -> Path:
    """The spec path for `-f`: the given file, or imagekit.yaml in the current folder."""
    candidate = Path(path) if path else Path.cwd() / SPEC_FILENAME
    if candidate.is_dir():
        candidate = candidate / SPEC_FILENAME
    return candidate


def load_spec(path: Path | str | None = None) -> LoadedSpec:
    """Read and validate a spec file; raises SpecError with file:line problems."""
    spec_path = find_spec(path)
    try:
        raw = spec_path.read_bytes()
    except FileNotFoundError:
        raise SpecError(
            [
                Problem(
                    str(spec_path),
                    0,
                    "",
                    "no such file",
                    "pass -f FILE or run in a folder with imagekit.yaml",
                )
            ]
        ) from None
    except OSError as exc:
        raise SpecError([Problem(str(spec_path), 0, "", f"cannot read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError([Problem(str(spec_path), line, "", "not UTF-8 text")]) from None
    return parse_spec(text, spec_path.absolute())
