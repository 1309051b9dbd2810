"""Layer hashing and staleness: which layers of which image and target need a build, and why."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from imagekit.digests import DigestCache, tree_digest
from imagekit.errors import Problem, SpecError
from imagekit.names import nvidia_require_cuda
from imagekit.spec import Layer, LoadedSpec

# Bump when what a layer's build does changes for the same spec (new provisioning steps), so builds redo.
RECIPE_VERSION = "3"  # 2: a root layer runs apt-get upgrade; 3: the venv installs in layers (venv_layers)
Target = Literal["docker", "ami"]
TARGETS: tuple[Target, ...] = ("docker", "ami")


@dataclass(frozen=True)
class LayerPlan:
    """One layer of an image's chain for one target."""

    name: str
    hash: str
    status: Literal["stale", "cached"]
    reason: str
    parent: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImagePlan:
    """An image's chain for one target, root first."""

    name: str
    target: Target
    layers: list[LayerPlan]

    def to_json(self) -> dict[str, object]:
        """The `plan --json` shape of this image."""
        return {
            "name": self.name,
            "target": self.target,
            "layers": [
                {"name": lp.name, "hash": lp.hash, "status": lp.status, "reason": lp.reason} for lp in self.layers
            ],
        }


# (image, target, layer name, layer hash) -> reason it is cached, or None when it is not
CacheLookup = Callable[[str, str, str, str], str | None]
# (image, target, layer name, layer hash) -> a reason to rebuild anyway (refresh, upstream drift), or None
StaleCheck = Callable[[str, str, str, str], str | None]
# (image, target) -> the target settings its newest verified build was made with, or None (none recorded)
PreviousSettings = Callable[[str, str], Mapping[str, str] | None]


def ami_settings(loaded: LoadedSpec) -> dict[str, str]:
    """The `aws:` settings that make an AMI what it is, as `aws.<key>` -> canonical text.

    Every layer AMI is built, encrypted, copied and tagged with them, so they are part of each AMI layer's hash;
    where the build is reached from (subnet, security group, ssh interface) is not.
    """
    aws = loaded.spec.aws
    values: dict[str, object] = {
        "region": aws.region,
        "ami_regions": sorted(set(aws.ami_regions)),
        "encrypted": aws.encrypted,
        "kms_key_id": aws.kms_key_id,
        "instance_type": aws.instance_type,
        "volume_size": aws.volume_size,
        "ssh_username": aws.ssh_username,
        "tags": dict(sorted(aws.tags.items())),
    }
    if aws.prewarm:  # only when on, so the AMI hashes of specs without it stay what they were
        values["prewarm"] = True
    return {f"aws.{k}": json.dumps(v, sort_keys=True, separators=(",", ":")) for k, v in values.items()}


def target_settings(loaded: LoadedSpec, target: str) -> dict[str, str]:
    """The settings outside the layers that go into a target's layer hashes (none for docker)."""
    return ami_settings(loaded) if target == "ami" else {}


def settings_changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """`aws.encrypted false -> true` for every setting that differs, sorted."""
    return [
        f"{key} {before.get(key, '(unset)')} -> {after.get(key, '(unset)')}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def layer_inputs(loaded: LoadedSpec, name: str, layer: Layer, cache: DigestCache) -> dict[str, str]:
    """Digests of every file a layer brings in: copied sources, the requirements lock, local weights."""
    inputs: dict[str, str] = {}
    problems: list[Problem] = []
    file = loaded.file

    def digest(kind: str, rel: str, key: tuple[str | int, ...]) -> None:
        path = loaded.local(rel)
        if not path.exists():
            problems.append(
                Problem(
                    file,
                    loaded.line_of(*key),
                    ".".join(str(k) for k in key),
                    f"{rel!r} does not exist (looked in {loaded.root})",
                )
            )
            return
        inputs[f"{kind}:{rel}"] = tree_digest(path, cache)

    for i, item in enumerate(layer.copy_):
        digest("copy", item.src, ("layers", name, "copy", i, "src"))
    if layer.requirements:
        digest("requirements", layer.requirements, ("layers", name, "requirements"))
    for i, model in enumerate(layer.models):
        if model.is_remote:
            inputs[f"model:{model.src}"] = model.sha256
        else:
            digest("model", model.src, ("layers", name, "models", i, "src"))
    if problems:
        raise SpecError(problems)
    return inputs


def layer_hash(
    layer: Layer,
    parent_hash: str | None,
    target: str,
    inputs: dict[str, str],
    settings: Mapping[str, str] | None = None,
) -> str:
    """Content hash over the layer's definition, its parent's hash, the target, its input files and settings."""
    # refresh and budget decide when and whether to build, not what is built
    dumped = layer.model_dump(mode="json", by_alias=True, exclude={"refresh", "budget"})
    for model in dumped.get("models") or []:
        if model.get("mode") is None:
            model.pop("mode", None)  # a model without `mode` hashes as before the key existed
        # the signature is checked on every build and changes nothing in the image: not part of the layer's content
        model.pop("signature", None)
    if dumped.get("venv_layers") is None:
        dumped.pop("venv_layers", None)
    if target == "docker":
        # the driver is the host's (an AMI installs it; a container only states the CUDA floor it needs): a new
        # driver pin must not rebuild docker layers. Hashed as unset, so layers without one keep their hashes.
        dumped["driver"] = None
    doc: dict[str, object] = {
        "recipe": RECIPE_VERSION,
        "target": target,
        "parent": parent_hash,
        "layer": dumped,
        "inputs": inputs,
    }
    if settings:  # only the AMI target has any, so docker hashes stay what they were
        doc["settings"] = dict(settings)
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def plan_image(
    loaded: LoadedSpec,
    image: str,
    target: Target,
    *,
    cache: DigestCache | None = None,
    lookup: CacheLookup | None = None,
    stale_check: StaleCheck | None = None,
    previous: PreviousSettings | None = None,
) -> ImagePlan:
    """Hash every layer of an image's chain for a target and decide cached or stale."""
    cache = cache or DigestCache()
    layers: list[LayerPlan] = []
    parent_hash: str | None = None
    settings = target_settings(loaded, target)
    # the chain hashed again with the settings of the newest verified build: when only the settings moved, that
    # chain is still in the store and the plan can name the setting instead of saying "not built yet"
    before = previous(image, target) if previous and settings else None
    changes = settings_changes(before, settings) if before is not None else []
    alt_parent: str | None = None
    parent_stale = False
    parent_name: str | None = None
    chain = loaded.chain(image)
    for name, layer in chain:
        inputs = layer_inputs(loaded, name, layer, cache)
        if target == "ami" and name == chain[-1][0]:
            # an AMI's leaf also carries the image's systemd unit (user, env, command): a layer that is one image's
            # leaf and another's inner layer is two different AMIs, and a changed command is a rebuild
            from imagekit.render.service_unit import render_service_unit

            unit = render_service_unit(loaded, image)
            if unit is not None:
                inputs["service-unit"] = hashlib.sha256(unit.encode()).hexdigest()
        if target == "docker" and name == chain[-1][0]:
            # a GPU image's leaf states its CUDA floor for the NVIDIA container runtime (NVIDIA_REQUIRE_CUDA)
            require = nvidia_require_cuda(loaded.resolved(image).cuda)
            if require:
                inputs["nvidia-require-cuda"] = require
        digest = layer_hash(layer, parent_hash, target, inputs, settings)
        status: Literal["stale", "cached"] = "stale"
        reason = "not built yet"
        hit = lookup(image, target, name, digest) if lookup else None
        forced = stale_check(image, target, name, digest) if stale_check else None
        moved: str | None = None  # only the target settings differ from a verified build's chain
        if changes and before is not None:
            alt_parent = layer_hash(layer, alt_parent, target, inputs, before)
            was = lookup(image, target, name, alt_parent) if lookup and not hit else None
            if was:
                moved = f"{target} settings changed since {was}: {'; '.join(changes)}"
            elif not hit:
                reason = f"not built yet ({'; '.join(changes)})"
        if moved:
            reason = moved
        elif parent_stale:
            reason = f"parent {parent_name} is stale"
        elif forced:
            reason = forced
        elif hit:
            status, reason = "cached", hit
        layers.append(LayerPlan(name, digest, status, reason, parent_name, inputs))
        parent_stale = status == "stale"
        parent_hash, parent_name = digest, name
    return ImagePlan(image, target, layers)


def plan(
    loaded: LoadedSpec,
    *,
    target: str = "all",
    images: list[str] | None = None,
    cache: DigestCache | None = None,
    lookup: CacheLookup | None = None,
    stale_check: StaleCheck | None = None,
    previous: PreviousSettings | None = None,
) -> list[ImagePlan]:
    """Plans for every (image, target) the spec builds, filtered by target and image names."""
    cache = cache or DigestCache()
    out: list[ImagePlan] = []
    for name, image in loaded.spec.images.items():
        if images and name not in images:
            continue
        for tgt in image.targets:
            if target not in ("all", tgt):
                continue
            out.append(
                plan_image(loaded, name, tgt, cache=cache, lookup=lookup, stale_check=stale_check, previous=previous)
            )
    return out


def plan_json(plans: list[ImagePlan]) -> dict[str, object]:
    """The `plan --json` document."""
    return {"images": [p.to_json() for p in plans]}


def spec_hash(loaded: LoadedSpec) -> str:
    """sha256 of the spec file's bytes, as recorded in manifests."""
    return hashlib.sha256(loaded.text.encode("utf-8")).hexdigest()
