"""build: the one pipeline for every target: select, plan (with the target's reuse lookup), build, verify, size
gate, record. `imagekit build` and `imagekit nightly` both drive it; nothing here branches on the target's name."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from imagekit.errors import BuildFailed, ImagekitError, UsageError, VerifyFailed
from imagekit.events import Event, Reporter, silent
from imagekit.plan import Target as TargetName
from imagekit.plan import plan_image
from imagekit.release import release_for
from imagekit.spec import LoadedSpec
from imagekit.targets import BuildOptions, LayerLock, Target, target_info
from imagekit.targets.engines import check_engine
from imagekit.targets.results import BaseResult, BuildResult, ImageResult, LayerResult
from imagekit.timefmt import iso_utc
from imagekit.verify.policy import effective_gpu

if TYPE_CHECKING:
    from imagekit.manifest.statement import BuildRecord
    from imagekit.nightly.budget import BudgetOutcome

__all__ = ["BaseResult", "BuildResult", "ImageResult", "LayerResult", "build", "select_images"]

COMPRESSIONS = ("gzip", "zstd", "zstd:chunked")
# image -> its last verified build of this target (the size gate's baseline), or None
Previous = Callable[[str], "BuildRecord | None"]


def build(  # noqa: PLR0917 (the shared contract: build(path, target, images, force, push, reporter))
    path: Path | str | None,
    target: str,
    images: list[str] | None = None,
    force: bool = False,
    push: str | None = None,
    reporter: Reporter = silent,
    *,
    verify: bool = True,
    engine: Any = None,
    rehearse: bool = False,
    force_layers: Collection[str] = (),
    layer_lock: LayerLock | None = None,
    previous: Previous | None = None,
    raise_failures: bool = True,
    now: datetime | None = None,
    gpu: str | None = None,
    tags: Sequence[str] = (),
    engine_kind: str | None = None,
    compression: str | None = None,
) -> BuildResult:
    """Build the spec's images for one target, reusing layers whose hash is already built; verify, gate, record.

    force_layers: layers rebuilt (without any build cache) although their hash is built (nightly refresh, upstream
    drift). layer_lock(key): held around each layer build; it yields True when another build of this run already
    made that layer, which is then reused. previous(image): the size gate's baseline (default: the store's last
    verified build). raise_failures=False leaves a failed verification or size gate in the result (nightly).
    now: the time that picks a refreshed root layer's base period (nightly passes its clock).
    gpu (required|optional) overrides verify.gpu for this call's verification; tags (--tag, `{git_sha}` expands
    to the commit) also tag the final image and go into its signed manifest (docker target).
    engine_kind (--engine docker|buildah) overrides the spec's build.engine (docker target).
    compression (gzip|zstd|zstd:chunked) overrides push.compression for this call's push.
    """
    from imagekit.api.spec import validate

    info = target_info(target)
    if push and info.push:
        raise UsageError(info.push)
    if rehearse and info.rehearse:
        raise UsageError(info.rehearse)
    if gpu is not None and info.gpu:
        raise UsageError(info.gpu)
    if tags and info.tag:
        raise UsageError(info.tag)
    if engine_kind is not None:
        check_engine(engine_kind)
        if info.engine:
            raise UsageError(info.engine)
    if gpu is not None:
        effective_gpu("required", gpu)  # a bad value is a usage error before anything is built
    if compression is not None and compression not in COMPRESSIONS:
        raise UsageError(f"--compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")
    if compression is not None and not push:
        raise UsageError("--compression says how to push: give --push REGISTRY/REPO[:TAG] with it")
    loaded = validate(path)
    selected = select_images(loaded, target, images)
    unknown = sorted(set(force_layers) - {n for i in selected for n, _ in loaded.chain(i)})
    if unknown:
        raise UsageError(f"--force-layer {unknown[0]!r} is no layer of {', '.join(selected)}")
    from imagekit.modelsig import check_signatures

    # signed weights are checked before any engine is asked anything: a bad signature leaves nothing built
    ca = loaded.spec.build.ca_bundle
    signatures = check_signatures(loaded, selected, reporter, ca_bundle=loaded.local(ca) if ca else None)
    if rehearse and target == "ami":
        from imagekit.extras import require

        require("rehearsal", "--rehearse")
    from imagekit.manifest.record import revoked_layers

    release = release_for(loaded.root, tags, loaded.spec.store) if info.tag is None else None
    options = BuildOptions(
        force,
        force_layers,
        push,
        rehearse,
        engine,
        reporter,
        now=now,
        no_reuse=frozenset(revoked_layers(loaded)),
        gpu=gpu,
        release=release,
        engine_kind=engine_kind or loaded.spec.build.engine,
        compression=compression or loaded.spec.push.compression,
        compression_level=loaded.spec.push.level,
    )
    out = BuildResult(spec=str(loaded.path), target=target)
    with info.open(loaded, selected, options) as tgt:
        for name in selected:
            res = build_image(loaded, tgt, name, options, layer_lock)
            dests = {m.dest for _, layer in loaded.chain(name) for m in layer.models}
            res.model_signatures = {d: s for d, s in signatures.items() if d in dests}
            out.images.append(res)
            if verify:
                verify_gate_record(loaded, tgt, res, reporter, previous=previous)
                if raise_failures:
                    _raise_failure(res)
        out.builders, out.layer_builds = dict(tgt.builders), tgt.layer_builds
    return out


def select_images(loaded: LoadedSpec, target: str, images: list[str] | None) -> list[str]:
    """The images to build: the named ones (each must build for target), else all that build for target."""
    spec = loaded.spec
    if images:
        from imagekit.api.spec import check_images

        check_images(loaded, images)
        wrong = [i for i in images if target not in spec.images[i].targets]
        if wrong:
            raise UsageError(f"image {wrong[0]} does not list target {target} (images.{wrong[0]}.targets)")
        return list(images)
    chosen = [n for n, img in spec.images.items() if target in img.targets]
    if not chosen:
        raise UsageError(f"no image in {loaded.file} lists target {target}")
    return chosen


def build_image(
    loaded: LoadedSpec, tgt: Target, image: str, options: BuildOptions, layer_lock: LayerLock | None = None
) -> ImageResult:
    """Plan one image with the target's reuse lookup, build its stale layers root first, finish the artifact."""
    t0 = time.monotonic()
    reporter = options.reporter
    res = ImageResult(image=image, target=tgt.name, started=iso_utc())
    found: dict[tuple[str, str], LayerResult] = {}

    def lookup(_img: str, _tgt: str, layer: str, digest: str) -> str | None:
        if options.force or layer in options.force_layers or digest in options.no_reuse:
            return None
        hit = tgt.reuse(image, layer, digest)
        if hit is None:
            return None
        found[(layer, digest)] = hit
        return hit.reason

    plan = plan_image(loaded, image, cast(TargetName, tgt.name), lookup=lookup)
    with tgt.prepare(image, res):
        for lp in plan.layers:
            if lp.status == "cached":
                reporter(Event("cached", f"{found[(lp.name, lp.hash)].tag} ({lp.reason})", image, lp.name, tgt.name))
                res.layers.append(found[(lp.name, lp.hash)])
                continue
            key = f"{tgt.name}:{loaded.spec.name}:{lp.name}:{lp.hash}"
            with layer_lock(key) if layer_lock else contextlib.nullcontext(False) as built_elsewhere:
                again = tgt.reuse(image, lp.name, lp.hash) if built_elsewhere else None
                if again is not None:
                    again.reason = "built by another image of this run"
                    reporter(Event("cached", f"{again.tag} ({again.reason})", image, lp.name, tgt.name))
                    res.layers.append(again)
                else:
                    force = options.force or lp.name in options.force_layers or lp.hash in options.no_reuse
                    res.layers.append(tgt.build_layer(image, lp, list(res.layers), force=force))
        res.seconds = round(time.monotonic() - t0, 1)
        tgt.finish(image, res)
    res.seconds = round(time.monotonic() - t0, 1)
    return res


def verify_gate_record(
    loaded: LoadedSpec, tgt: Target, res: ImageResult, reporter: Reporter, *, previous: Previous | None = None
) -> None:
    """Boot-and-verify, then the size gate, then the signed record, which says failed when either failed.

    The gate runs before the record so an over-budget build is stored as a failed build: never cached by a later
    plan, never promotable. Failures are left in `res` (verify_failures, budget_passed) for the caller to judge.
    """
    try:
        res.verify_report = tgt.verify(res.image, res)
    except VerifyFailed as exc:
        res.verify_report = exc.report_path or ""
        res.verify_failures = list(exc.failures) or [str(exc)]
        res.verify_error = str(exc)
    failure = "; ".join(res.verify_failures) or None
    if failure is None:
        failure = scan_gate(loaded, res, reporter)
    if failure is None:
        gate = size_gate(loaded, tgt, res, previous)
        if gate is not None:
            res.budget, res.budget_passed = gate.message, gate.passed
            if not gate.passed:
                failure = f"size budget: {gate.message}"
    record_image(loaded, tgt, res, reporter, failure=failure)


def scan_gate(loaded: LoadedSpec, res: ImageResult, reporter: Reporter) -> str | None:
    """verify.scan over what verification saw: the failure naming each blocking finding, or None."""
    if loaded.verify_for(res.image).scan is None or not res.verify_report:
        return None
    from imagekit.inputs import MAX_RECORD_BYTES, JsonInputError, load_json, read_text
    from imagekit.scan.gate import scan_report

    try:
        text = read_text(Path(res.verify_report), what="verification report", limit=MAX_RECORD_BYTES)
        report = load_json(text, limit=MAX_RECORD_BYTES)
    except (OSError, JsonInputError) as exc:
        return f"scan gate: cannot read the verification report {res.verify_report}: {exc}"
    done = scan_report(loaded, res.image, report if isinstance(report, dict) else {}, reporter)
    if done is None:
        return None
    outcome, res.scan = done
    res.scan_passed = outcome.passed
    for line in outcome.skipped:
        reporter(Event("warn", f"scan: {line}", res.image, "", res.target))
    counts = ", ".join(f"{n} {s}" for s, n in outcome.counts().items() if n)
    allowed = f", {len(outcome.allowed)} allowed" if outcome.allowed else ""
    reporter(Event("step", f"scan: {counts or 'no findings'}{allowed}", res.image, "", res.target))
    res.scan_failure = outcome.failure() or ""
    return res.scan_failure or None


def record_image(
    loaded: LoadedSpec, tgt: Target, res: ImageResult, reporter: Reporter, *, failure: str | None = None
) -> None:
    """Sign and store the build's manifest (in-toto statement in a DSSE envelope) after verification."""
    from imagekit.manifest.record import record_build

    report = Path(res.verify_report) if res.verify_report else None
    rec = record_build(
        loaded,
        res.image,
        tgt.name,
        [(lr.name, lr.hash) for lr in res.layers],
        started=res.started,
        finished=iso_utc(),  # after verification: the record covers build and verify
        report=report if report is not None and report.is_file() else None,
        failure=failure,
        reporter=reporter,
        vuln=res.scan,
        model_signatures=res.model_signatures,
        **tgt.record_facts(res),
    )
    res.manifest_id, res.manifest_path, res.manifest_passed = rec.id, str(rec.location), rec.passed
    if res.pushed and rec.passed and rec.store is not None:
        # where cosign and admission controllers look: the attestations beside the pushed image
        from imagekit.api.attest import attach_stored

        done = attach_stored(rec.store, res.image, rec.id)
        res.attestations = done["reference"]
        reporter(Event("done", f"attestations at {done['reference']}", res.image, "", res.target))


def size_gate(loaded: LoadedSpec, tgt: Target, res: ImageResult, previous: Previous | None) -> BudgetOutcome | None:
    """The size budget of an image and its layers against its last verified build; None when no budget is set."""
    from imagekit.nightly.budget import check_budget, layer_sizes

    chain = loaded.chain(res.image)
    if loaded.spec.images[res.image].budget is None and all(layer.budget is None for _, layer in chain):
        return None  # no budget: the store is not even read
    prev = previous(res.image) if previous is not None else _last_verified(loaded, res)
    sizes = tgt.sizes()
    tags = [(lr.name, lr.hash, lr.tag) for lr in res.layers]
    prev_tags: dict[str, tuple[str, str]] = {}
    for name, digest in prev.layers if prev else []:
        ref = tgt.layer_ref(name, digest)
        if ref is not None:
            prev_tags[name] = (digest, ref)
    prev_report = None
    if prev is not None:
        with contextlib.suppress(ImagekitError, ValueError):
            prev_report = prev.report()
    report = None
    if res.verify_report:
        with contextlib.suppress(OSError, ValueError):
            report = json.loads(Path(res.verify_report).read_text(encoding="utf-8"))
    outcome = check_budget(
        loaded, res.image, size=res.size or None, previous_size=prev.size_bytes if prev else None,
        layers=layer_sizes(sizes, tags, prev_tags), layer_tags={lr.name: lr.tag for lr in res.layers}, sizes=sizes,
        reports=(prev_report, report if isinstance(report, dict) else None),
    )  # fmt: skip
    return outcome if outcome.checked else None


def _last_verified(loaded: LoadedSpec, res: ImageResult) -> BuildRecord | None:
    from imagekit.manifest.record import verified_builds

    builds = verified_builds(loaded, rehearsal=res.rehearsal)
    return next((b for b in reversed(builds) if b.image == res.image and b.target == res.target), None)


def _raise_failure(res: ImageResult) -> None:
    """`imagekit build`: a failed verification or size gate stops the build (exit 1) once it is recorded."""
    if res.verify_failures:
        raise VerifyFailed(
            res.verify_error or f"{res.image}: verification of {res.ref} failed",
            failures=res.verify_failures,
            report_path=res.verify_report,
        )
    if res.scan_passed is False:
        raise BuildFailed(f"{res.scan_failure} (recorded as failed: {res.manifest_id})", image=res.image)
    if res.budget_passed is False:
        raise BuildFailed(f"size budget: {res.budget} (recorded as failed: {res.manifest_id})", image=res.image)
