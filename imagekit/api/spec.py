"""validate and plan."""

from __future__ import annotations

from pathlib import Path

from imagekit.digests import DigestCache
from imagekit.errors import Problem, SpecError
from imagekit.inputs import exists, is_file
from imagekit.plan import CacheLookup, ImagePlan, PreviousSettings, StaleCheck, plan
from imagekit.spec import LoadedSpec, load_spec


def check_files(loaded: LoadedSpec, cache: DigestCache | None = None) -> list[Problem]:
    """Problems with the files a spec names: missing sources, weights whose digest differs from the pin."""
    cache = cache or DigestCache()
    problems: list[Problem] = []
    file = loaded.file
    for name, layer in loaded.spec.layers.items():
        for i, item in enumerate(layer.copy_):
            if not exists(loaded.local(item.src)):
                problems.append(
                    Problem(
                        file,
                        loaded.line_of("layers", name, "copy", i, "src"),
                        f"layers.{name}.copy[{i}].src",
                        f"{item.src!r} does not exist",
                    )
                )
        if layer.requirements and not is_file(loaded.local(layer.requirements)):
            problems.append(
                Problem(
                    file,
                    loaded.line_of("layers", name, "requirements"),
                    f"layers.{name}.requirements",
                    f"{layer.requirements!r} does not exist",
                )
            )
        for i, model in enumerate(layer.models):
            if model.is_remote:
                continue
            path = loaded.local(model.src)
            key = f"layers.{name}.models[{i}]"
            line = loaded.line_of("layers", name, "models", i, "sha256")
            if not is_file(path):
                problems.append(
                    Problem(
                        file,
                        line,
                        f"{key}.src",
                        f"{model.src!r} does not exist",
                        "create the weights file or fix the path",
                    )
                )
                continue
            found = cache.digest(path)
            if found != model.sha256:
                problems.append(
                    Problem(
                        file,
                        line,
                        f"{key}.sha256",
                        f"{model.src} has sha256 {found}, the spec pins {model.sha256}",
                        "update the pin if the new weights are intended",
                    )
                )
    return problems


def validate(path: Path | str | None, *, check_compat: bool = True) -> LoadedSpec:
    """Load a spec, check its files and versions against the compatibility matrix; raise on any problem."""
    loaded = load_spec(path)
    problems = check_files(loaded)
    if check_compat:
        from imagekit.compat.check import check_spec

        problems += check_spec(loaded)
    if problems:
        raise SpecError(problems)
    return loaded


def plan_spec(
    path: Path | str | None,
    *,
    target: str = "all",
    images: list[str] | None = None,
    lookup: CacheLookup | None = None,
    stale_check: StaleCheck | None = None,
) -> tuple[LoadedSpec, list[ImagePlan]]:
    """Validate a spec and plan its layers."""
    loaded = validate(path)
    check_images(loaded, images)
    previous: PreviousSettings | None = None
    if lookup is None or (stale_check is None and any(layer.refresh for layer in loaded.spec.layers.values())):
        from imagekit.manifest.record import lookup_from, settings_from, verified_builds

        builds = verified_builds(loaded)
        # default: a layer is cached when the store holds a verified, signed, not revoked build with its hash
        if lookup is None:
            lookup, previous = lookup_from(builds), settings_from(builds)
        if stale_check is None and any(layer.refresh for layer in loaded.spec.layers.values()):
            # `refresh due` from the store's build times (offline); upstream drift is asked by `imagekit nightly`
            from imagekit.nightly.staleness import StaleChecker

            stale_check = StaleChecker(loaded, builds)
    plans = plan(loaded, target=target, images=images, lookup=lookup, stale_check=stale_check, previous=previous)
    return loaded, plans


def schema_text() -> str:
    """The JSON Schema of imagekit.yaml, as committed in docs/imagekit.schema.json (sorted keys, trailing newline)."""
    import json

    from imagekit.spec_model import json_schema

    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def check_images(loaded: LoadedSpec, images: list[str] | None) -> None:
    """Refuse image names (from --image) that the spec does not define, naming the ones it does."""
    unknown = [i for i in images or [] if i not in loaded.spec.images]
    if unknown:
        problem = Problem(loaded.file, loaded.line_of("images"), "images", f"unknown image {unknown[0]!r}",
                          f"images: {', '.join(loaded.spec.images)}")  # fmt: skip
        raise SpecError([problem])
