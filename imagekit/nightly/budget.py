"""The size gate: an image (or layer) may not grow past its budget against the last verified build."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from imagekit.spec import Budget, LoadedSpec


class SizeSource(Protocol):
    """What the gate needs from the engine: an image's size and its history rows (newest first)."""

    def size(self, ref: str) -> int | None: ...

    def history(self, ref: str) -> list[dict[str, Any]]: ...


@dataclass
class LayerSize:
    """One layer of the chain: its own bytes (its image minus its parent's) now and in the previous build."""

    name: str
    hash: str
    size: int | None
    previous: int | None = None

    @property
    def growth(self) -> int | None:
        """Bytes grown since the previous build (None when either side is unknown)."""
        if self.size is None or self.previous is None:
            return None
        return self.size - self.previous


@dataclass
class BudgetOutcome:
    """The gate's verdict, with what to blame."""

    passed: bool
    message: str
    layers: list[LayerSize] = field(default_factory=list)
    blamed: str | None = None
    grew: list[str] = field(default_factory=list)
    checked: bool = False


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _over(budget: Budget, size: int, previous: int | None) -> str | None:
    """Why a size breaks a budget, or None."""
    if budget.max_bytes is not None and size > budget.max_bytes:
        return f"{_mb(size)} is over max_bytes {_mb(budget.max_bytes)}"
    if budget.max_growth_pct is not None and previous:
        pct = (size - previous) * 100.0 / previous
        if pct > budget.max_growth_pct:
            return f"grew {pct:+.1f}% ({_mb(previous)} -> {_mb(size)}), over max_growth_pct {budget.max_growth_pct:g}%"
    return None


def layer_sizes(
    sizes: SizeSource, tags: list[tuple[str, str, str]], previous_tags: dict[str, tuple[str, str]]
) -> list[LayerSize]:
    """Per-layer bytes from the engine: each layer image's size minus its parent image's size.

    tags: (layer, hash, tag) root first for this build; previous_tags: layer -> (hash, tag) of the previous build.
    A layer whose previous hash equals its current one is unchanged, unless it was rebuilt (its tag moved), in
    which case the previous size is unknown.
    """
    out: list[LayerSize] = []
    parent_now: int | None = 0
    parent_prev: int | None = 0
    prev_chain_known = True
    for name, digest, tag in tags:
        total = sizes.size(tag)
        own = None if total is None or parent_now is None else total - parent_now
        prev_own: int | None = None
        prev = previous_tags.get(name)
        prev_total: int | None = None
        if prev is not None and prev_chain_known:
            prev_hash, prev_tag = prev
            prev_total = total if prev_hash == digest else sizes.size(prev_tag)
            if prev_total is not None and parent_prev is not None:
                prev_own = prev_total - parent_prev
        prev_chain_known = prev_total is not None
        out.append(LayerSize(name, digest, own, prev_own))
        parent_now, parent_prev = total, prev_total
    return out


def grown_rows(sizes: SizeSource, tag: str, parent_tag: str | None, top: int = 3) -> list[str]:
    """The biggest build steps of one layer image (its `docker history` rows above its parent's)."""
    rows = sizes.history(tag)
    parent_rows = len(sizes.history(parent_tag)) if parent_tag else 0
    own = rows[: max(0, len(rows) - parent_rows)]
    own = sorted((r for r in own if int(r.get("Size", 0) or 0) > 0), key=lambda r: -int(r.get("Size", 0)))
    out = []
    for r in own[:top]:
        step = " ".join(str(r.get("CreatedBy", "")).split())
        out.append(f"{_mb(int(r['Size']))}: {step[:160]}")
    return out


def _weights_step(row: dict[str, Any], models: list[tuple[str, str, int | None]]) -> bool:
    """A history row that is one weights file: one file cannot be split. Known by its dest or tar in the step, or,
    where the step names no path (buildah writes `ADD file:<digest> in /`), by its size."""
    step = str(row.get("CreatedBy", ""))
    size = int(row.get("Size", 0) or 0)
    anonymous = re.search(r"\b(ADD|COPY) (--\S+ )*file:[0-9a-f]+ in ", step) is not None
    for dest, tar, nbytes in models:
        if dest in step or tar in step:
            return True
        if anonymous and nbytes is not None and nbytes <= size <= nbytes + (1 << 20):
            return True
    return False


def _model_sizes(loaded: LoadedSpec, layer: str) -> list[tuple[str, str, int | None]]:
    from imagekit.names import MODELS_DIR
    from imagekit.weights_tar import tar_name

    out: list[tuple[str, str, int | None]] = []
    for model in loaded.spec.layers[layer].models:
        path = loaded.root / MODELS_DIR / model.sha256 if model.is_remote else loaded.local(model.src)
        try:
            nbytes: int | None = path.stat().st_size
        except OSError:
            nbytes = None
        out.append((model.dest, tar_name(model), nbytes))
    return out


def big_steps(
    loaded: LoadedSpec, image: str, names: list[str], layer_tags: dict[str, str], sizes: SizeSource
) -> tuple[list[tuple[str | None, str]], bool]:
    """(layer, why) for every build step over its max_layer_bytes (the image's budget and the layer's own, the
    smaller wins), weights files left out; and whether any limit applied."""
    img_budget = loaded.spec.images[image].budget
    img_limit = img_budget.max_layer_bytes if img_budget else None
    out: list[tuple[str | None, str]] = []
    checked = False
    for i, name in enumerate(names):
        budget = loaded.spec.layers[name].budget
        limits = [x for x in (img_limit, budget.max_layer_bytes if budget else None) if x is not None]
        tag = layer_tags.get(name)
        if not limits or tag is None:
            continue
        checked = True
        limit = min(limits)
        parent_tag = layer_tags.get(names[i - 1]) if i > 0 else None
        rows = sizes.history(tag)
        own = rows[: max(0, len(rows) - (len(sizes.history(parent_tag)) if parent_tag else 0))]
        models = _model_sizes(loaded, name)
        for row in own:
            size = int(row.get("Size", 0) or 0)
            if size > limit and not _weights_step(row, models):
                step = " ".join(str(row.get("CreatedBy", "")).split())[:160]
                why = f"a step of {_mb(size)} is over max_layer_bytes {_mb(limit)}"
                how = "one blob, unpacked on one core; split it, e.g. with narrower venv_layers"
                out.append((name, f"layer {name}: {why} ({how}): {step}"))
    return out, checked


def package_changes(old: dict[str, Any] | None, new: dict[str, Any] | None, top: int = 8) -> list[str]:
    """Packages added or changed between two verification reports' probes (pip and dpkg)."""
    out: list[str] = []
    for kind in ("pip", "dpkg"):
        a = ((old or {}).get("probe", {}).get(kind) or {}).get("packages") or {}
        b = ((new or {}).get("probe", {}).get(kind) or {}).get("packages") or {}
        for name in sorted(set(b) - set(a)):
            out.append(f"{kind} +{name} {b[name]}")
        for name in sorted(n for n in set(a) & set(b) if a[n] != b[n]):
            out.append(f"{kind} {name} {a[name]} -> {b[name]}")
    return out[:top]


def check_budget(
    loaded: LoadedSpec,
    image: str,
    *,
    size: int | None,
    previous_size: int | None,
    layers: list[LayerSize],
    layer_tags: dict[str, str],
    sizes: SizeSource,
    reports: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None),
) -> BudgetOutcome:
    """Apply images.<image>.budget to the image and layers.<name>.budget to each layer of its chain."""
    problems: list[tuple[str | None, str]] = []
    checked = False
    img_budget = loaded.spec.images[image].budget
    if img_budget is not None and size is not None:
        checked = True
        why = _over(img_budget, size, previous_size)
        if why:
            problems.append((None, f"image {image}: {why}"))
    for ls in layers:
        budget = loaded.spec.layers[ls.name].budget
        if budget is None or ls.size is None:
            continue
        checked = True
        why = _over(budget, ls.size, ls.previous)
        if why:
            problems.append((ls.name, f"layer {ls.name}: {why}"))
    big, steps_checked = big_steps(loaded, image, [ls.name for ls in layers], layer_tags, sizes)
    checked = checked or steps_checked
    problems += big
    if not problems:
        msg = "within budget" if checked else "no budget set"
        return BudgetOutcome(True, msg, layers, checked=checked)
    # blame the layer named by a layer budget, else the one that grew the most
    blamed = next((name for name, _ in problems if name), None)
    if blamed is None:
        grown = [ls for ls in layers if ls.growth is not None]
        if grown:
            blamed = max(grown, key=lambda ls: ls.growth or 0).name
        elif layers:
            blamed = layers[-1].name
    names = [ls.name for ls in layers]
    grew: list[str] = []
    if blamed is not None and blamed in layer_tags:
        i = names.index(blamed)
        parent_tag = layer_tags.get(names[i - 1]) if i > 0 else None
        grew += grown_rows(sizes, layer_tags[blamed], parent_tag)
    grew += package_changes(*reports)
    parts = [p for _, p in problems]
    by_layer = ", ".join(
        f"{ls.name} {'+' if (ls.growth or 0) >= 0 else ''}{_mb(ls.growth)}" for ls in layers if ls.growth
    )
    msg = "; ".join(parts) + f"; grew most in layer {blamed}"
    if by_layer:
        msg += f" (per layer: {by_layer})"
    if grew:
        msg += "; biggest: " + "; ".join(grew)
    return BudgetOutcome(False, msg, layers, blamed, grew, checked)
