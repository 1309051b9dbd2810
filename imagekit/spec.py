"""The layered spec (`imagekit.yaml`, version 1): frozen models and `load_spec`, the only YAML reader."""

from __future__ import annotations

import difflib
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from imagekit.errors import Problem, SpecError
from imagekit.inputs import MAX_INPUT_BYTES, clip, read_regular
from imagekit.spec_checks import check_store, check_text, copy_tree_problem, loc_str, root_of, system_path
from imagekit.spec_model import (
    NAME_RE,
    SHA256_RE,
    AmiFilter,
    Aws,
    Bootstrap,
    Budget,
    Build,
    CopyItem,
    Expect,
    From,
    Health,
    Image,
    Layer,
    LoadedSpec,
    ModelFile,
    ModelSignatureRef,
    Refresh,
    Resolved,
    Retention,
    Scan,
    Signing,
    Smoke,
    Spec,
    Verify,
    chain_of,
    display_path,
    resolve_chain,
)
from imagekit.yamlsrc import Located, YamlSyntaxError, load_located

SPEC_FILENAME = "imagekit.yaml"
MAX_SPEC_BYTES = MAX_INPUT_BYTES

__all__ = [
    "NAME_RE",
    "SHA256_RE",
    "SPEC_FILENAME",
    "AmiFilter",
    "Aws",
    "Bootstrap",
    "Budget",
    "Build",
    "CopyItem",
    "Expect",
    "From",
    "Health",
    "Image",
    "Layer",
    "LoadedSpec",
    "ModelFile",
    "ModelSignatureRef",
    "Refresh",
    "Resolved",
    "Retention",
    "Scan",
    "Signing",
    "Smoke",
    "Spec",
    "Verify",
    "chain_of",
    "display_path",
    "find_spec",
    "load_spec",
    "parse_spec",
    "resolve_chain",
]


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
        problems.append(Problem(file, line, loc_str(loc), message, hint))
    return problems


def _check_graph(spec: Spec, file: str, located: Located) -> list[Problem]:
    problems: list[Problem] = []
    names = list(spec.layers)
    roots = []
    for name, layer in spec.layers.items():
        if not NAME_RE.fullmatch(name):
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
        if not NAME_RE.fullmatch(name):
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
        root = root_of(spec, image.leaf)
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
        problems.append(Problem(file, located.line_of(path), loc_str(path), message, hint))

    for name, layer in spec.layers.items():
        base: tuple[str | int, ...] = ("layers", name)
        for i, item in enumerate(layer.copy_):
            if _escapes(root, item.src):
                bad(
                    (*base, "copy", i, "src"),
                    f"{item.src!r} escapes the spec's folder",
                    "keep sources next to imagekit.yaml",
                )
            elif (why := copy_tree_problem(root, item.src)) is not None:
                bad((*base, "copy", i, "src"), why, "copy the file itself, or make the link in a `run:` step")
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


def _check_partition(spec: Spec, file: str, located: Located) -> list[Problem]:
    """AMI settings must all live in the partition of aws.region (aws, aws-cn, aws-us-gov)."""
    from imagekit import partitions

    if not any("ami" in img.targets for img in spec.images.values()):
        return []
    aws = spec.aws
    problems: list[Problem] = []

    def at(*key: str | int) -> int:
        return located.line_of(("aws", *key)) or located.line_of(("aws",)) or 1

    region_line = at("region")
    if not partitions.REGION_RE.fullmatch(aws.region):
        problems.append(Problem(file, region_line, "aws.region", f"{aws.region!r} is not an AWS region name"))
        return problems
    part = partitions.partition(aws.region)
    for i, other in enumerate(aws.ami_regions):
        if partitions.partition(other) != part:
            problems.append(
                Problem(
                    file,
                    at("ami_regions", i),
                    f"aws.ami_regions[{i}]",
                    f"{other} is in the {partitions.partition(other)} partition; AMIs copy only within {part} "
                    f"({aws.region})",
                )
            )
    if aws.kms_key_id and aws.kms_key_id.startswith("arn:"):
        found = partitions.arn_partition(aws.kms_key_id)
        if found != part:
            problems.append(
                Problem(
                    file,
                    at("kms_key_id"),
                    "aws.kms_key_id",
                    f"the ARN names partition {found or 'none'}, but {aws.region} is in {part}",
                    f"write arn:{part}:kms:{aws.region}:ACCOUNT:key/... (or an alias/ name)",
                )
            )
    for name, layer in spec.layers.items():
        ami = layer.from_.ami if layer.from_ else None
        for i, owner in enumerate(ami.owners if ami else ()):
            why = partitions.owner_problem(owner, aws.region)
            if why:
                line = located.line_of(("layers", name, "from", "ami", "owners", i)) or located.line_of(
                    ("layers", name, "from")
                )
                problems.append(Problem(file, line, f"layers.{name}.from.ami.owners[{i}]", why))
    return problems


def parse_spec(text: str, path: Path) -> LoadedSpec:
    """Validate spec text that was read from `path`; raises SpecError listing every problem."""
    file = display_path(path)
    try:
        located = load_located(text)
    except YamlSyntaxError as exc:
        raise SpecError([Problem(file, exc.line, "", f"YAML syntax error: {exc.message}")]) from None
    problems = [
        Problem(file, line, loc_str(key), "key is given twice", "YAML keeps only the last one")
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
    problems += check_text(located, file)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise SpecError([*problems, *_pydantic_problems(exc, file, located)]) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise SpecError([*problems, Problem(file, 1, "", f"cannot read the spec: {exc}")]) from None
    problems += _check_graph(spec, file, located)
    problems += _check_paths(spec, path.parent, file, located)
    problems += _check_partition(spec, file, located)
    problems += check_store(spec, path.parent, file, located)
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
