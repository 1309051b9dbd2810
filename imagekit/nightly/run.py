"""The nightly job: plan every image and target against the store, build what is stale, gate, record, promote, gc."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imagekit.errors import (
    BuildFailed,
    ImagekitError,
    Interrupted,
    SignatureError,
    StoreError,
    UsageError,
)
from imagekit.events import Event, Reporter, silent
from imagekit.fsutil import check_dir
from imagekit.locking import store_lock
from imagekit.manifest.ledger import Ledger, resolve_trust, spec_store
from imagekit.manifest.record import lookup_from, revoked_layers, settings_from, verified_builds
from imagekit.manifest.statement import BuildRecord
from imagekit.manifest.store import Store
from imagekit.nightly.report import Check, ImageRun, NightlyResult, Rebuilt, write_reports
from imagekit.nightly.staleness import AmiResolver, Clock, DockerResolver, StaleChecker, matrix_news, utc_now
from imagekit.plan import ImagePlan, plan
from imagekit.runners import process
from imagekit.spec import LoadedSpec
from imagekit.targets import TARGETS
from imagekit.targets.results import ImageResult
from imagekit.timefmt import iso_utc

NIGHTLY_CHANNEL = "nightly"
# plan reasons that mean "rebuild although the hash is built": the build must skip the cache for that layer
FORCING = ("refresh due", "upstream changed", "revoked layer")


class LayerLocks:
    """Per-tag locks shared by the concurrent builds of one run: a shared parent layer is built once."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._built: set[str] = set()

    @contextlib.contextmanager
    def __call__(self, tag: str) -> Iterator[bool]:
        with self._guard:
            lock = self._locks.setdefault(tag, threading.Lock())
        with lock:
            yield tag in self._built
            # reached only when the layer's build (or reuse) did not raise
            with self._guard:
                self._built.add(tag)


@dataclass
class _Task:
    image: str
    target: str
    plan: ImagePlan
    previous: BuildRecord | None
    run: ImageRun = field(init=False)

    def __post_init__(self) -> None:
        self.run = ImageRun(self.image, self.target)


@dataclass
class _Context:
    loaded: LoadedSpec
    store: Store
    reporter: Reporter
    promote: str | None
    rehearse: bool
    started: datetime
    locks: LayerLocks
    engine: Any = None
    builder: Callable[..., Any] | None = None
    clock: Clock = utc_now
    engine_kind: str | None = None  # --engine: the docker target's image engine (None: the spec's build.engine)


def night_plans(
    loaded: LoadedSpec,
    store: Store,
    builds: list[BuildRecord],
    *,
    target: str,
    clock: Clock,
    reporter: Reporter,
    rehearse: bool,
    images: list[str] | None = None,
    docker_resolver: DockerResolver | None = None,
    ami_resolver: AmiResolver | None = None,
    engine: Any = None,
    engine_kind: str | None = None,
) -> list[ImagePlan]:
    """The plans a nightly run acts on, from these verified builds: stale layers, refresh due as of clock(),
    upstream drift and revoked layers. `nightly`, `plan --matrix` and `nightly --collect` all plan here, so a
    fanned-out night builds and collects exactly what one `nightly` run would."""
    # the resolvers ask their upstream only when a plan has a layer from it (they connect on first use)
    if docker_resolver is None and target in ("docker", "all"):
        from imagekit.nightly.staleness import EngineResolver

        docker_resolver = EngineResolver(engine, engine_kind or loaded.spec.build.engine)
    if ami_resolver is None and target in ("ami", "all") and not rehearse:  # a rehearsal has no real EC2 to ask
        from imagekit.nightly.staleness import Ec2Resolver

        ami_resolver = Ec2Resolver()
    revoked = revoked_layers(loaded, store=store, builds=builds)
    checker = StaleChecker(loaded, builds, clock, docker_resolver, ami_resolver, reporter, revoked)
    return plan(
        loaded, target=target, images=images, lookup=lookup_from(builds), stale_check=checker,
        previous=settings_from(builds),
    )  # fmt: skip


def run_nightly(
    path: Path | str | None,
    *,
    target: str = "all",
    jobs: int = 1,
    promote: str | None = None,
    report_dir: Path | None = None,
    rehearse: bool = False,
    reporter: Reporter = silent,
    clock: Clock = utc_now,
    docker_resolver: DockerResolver | None = None,
    ami_resolver: AmiResolver | None = None,
    engine: Any = None,
    builder: Callable[..., Any] | None = None,
    engine_kind: str | None = None,
) -> NightlyResult:
    """Plan, build what is stale, verify, record, gate, promote and gc every image and target of a spec.

    engine_kind (docker | buildah): the docker target's image engine for the builds, their verification (docker
    or podman), the drift checks and gc (default: the spec's build.engine)."""
    from imagekit.api.manifest import _check_channel
    from imagekit.api.spec import validate

    if target not in (*TARGETS, "all"):
        raise UsageError(f"--target must be docker, ami or all, not {target!r}")
    check_night_engine(engine_kind, target)
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if promote:
        _check_channel(promote)
    if report_dir is not None:
        # before an hour of builds, not after: the reports could not be written
        check_dir(Path(report_dir), "--report")
    loaded = validate(path)
    store = spec_store(loaded)
    started = clock()
    result = NightlyResult(spec=str(loaded.path), started=iso_utc(started))
    result.matrix = matrix_news()
    with store_lock(store.url, reporter=reporter, what=f"imagekit nightly {loaded.path}"):
        # the default key is created on first use: do it once here, not from several threads at once
        from imagekit.manifest.keys import load_signer

        _signer, created = load_signer(loaded.spec.signing.key, base=loaded.root)
        if created:
            reporter(Event("info", f"created a signing key at {created} (public key beside it); keep it private"))
        builds = verified_builds(loaded, store=store, rehearsal=rehearse)
        plans = night_plans(
            loaded, store, builds, target=target, clock=clock, reporter=reporter, rehearse=rehearse,
            docker_resolver=docker_resolver, ami_resolver=ami_resolver, engine=engine, engine_kind=engine_kind,
        )  # fmt: skip
        if not plans:
            raise UsageError(f"no image in {loaded.file} builds for target {target}")
        # the wall clock, not `clock`: it finds the manifests this run's builds write
        ctx = _Context(loaded, store, reporter, promote, rehearse, datetime.now(timezone.utc), LayerLocks(), engine,
                       builder, clock, engine_kind)  # fmt: skip
        tasks = []
        for p in plans:
            previous = next((b for b in reversed(builds) if b.image == p.name and b.target == p.target), None)
            task = _Task(p.name, p.target, p, previous)
            tasks.append(task)
            stale = [lp for lp in p.layers if lp.status == "stale"]
            if stale:
                first = stale[0]
                reporter(Event("info", f"stale from {first.name}: {first.reason}", p.name, first.name, p.target))
            else:
                task.run.checks.append(Check("up to date", True, f"all {len(p.layers)} layers cached"))
                task.run.manifest_id = previous.id if previous else None
                task.run.size_bytes = previous.size_bytes if previous else None
                reporter(Event("cached", f"up to date ({p.layers[-1].reason})", p.name, "", p.target))
        todo = [t for t in tasks if any(lp.status == "stale" for lp in t.plan.layers)]
        # a target whose builds share one place (one EC2, one rehearsal moto server) runs them one after another
        units: list[Callable[[], None]] = []
        for name, info in TARGETS.items():
            mine = [t for t in todo if t.target == name]
            if info.concurrent:
                units += [functools.partial(_run_task, ctx, t) for t in mine]
            elif mine:
                units.append(functools.partial(_run_tasks, ctx, mine))
        crashed: list[BaseException] = []
        _run_units(units, jobs, crashed, reporter)
        result.runs = [t.run for t in tasks]
        if not crashed:
            result.gc = _gc(ctx, tasks)
            from imagekit.nightly.rescan import rescan_channels

            # after promotion: what the channels point at now, scanned against today's archive
            result.rescan = rescan_channels(loaded, store, reporter)
    result.finished = iso_utc(clock())
    if report_dir is not None:
        write_reports(result, Path(report_dir))
    if crashed:
        # a bug (not a build or verify failure): the other images finished and the reports are written; exit 3
        raise crashed[0]
    return result


def check_night_engine(engine_kind: str | None, target: str) -> None:
    """--engine names an engine and goes with a run that builds docker images (UsageError otherwise)."""
    if engine_kind is None:
        return
    from imagekit.targets.engines import check_engine

    check_engine(engine_kind)
    if target == "ami":
        raise UsageError(TARGETS["ami"].engine or "--engine applies to --target docker")


def _run_units(units: list[Callable[[], None]], jobs: int, crashed: list[BaseException], reporter: Reporter) -> None:
    """Run the builds, `jobs` at a time. Ctrl-C or SIGTERM (which reach this, the main thread, only) cancels the
    whole run: every child process group of every worker is stopped and waited for (Packer terminates its
    instance), the containers go with their context managers, no unfinished build is recorded; then Interrupted
    (exit 130)."""
    with process.forward_sigterm():
        try:
            if jobs == 1 or len(units) <= 1:
                for unit in units:
                    _guarded(unit, crashed)
                return
            pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="imagekit-nightly")
            try:
                futures = [pool.submit(_guarded, unit, crashed) for unit in units]
                for fut in futures:
                    fut.result()
            finally:
                if process.cancel_requested() or sys.exc_info()[0] is not None:
                    process.request_cancel()
                    reporter(Event("warn", "interrupted: stopping every build in progress and cleaning up"))
                pool.shutdown(wait=True, cancel_futures=True)
        except (KeyboardInterrupt, Interrupted):
            process.request_cancel()
            raise Interrupted(
                "nightly interrupted; the builds in progress were stopped and cleaned up, none was recorded"
            ) from None
        finally:
            process.reset_cancel()


def _guarded(unit: Callable[[], None], crashed: list[BaseException]) -> None:
    """Run one unit; an unexpected error is kept (and re-raised after the others) instead of stopping them.

    Interrupted is no error of the unit: it ends the run (see _run_units)."""
    try:
        unit()
    except Interrupted:
        process.request_cancel()
        raise
    except Exception as exc:
        crashed.append(exc)


def _run_tasks(ctx: _Context, tasks: list[_Task]) -> None:
    for task in tasks:
        _run_task(ctx, task)


def _run_task(ctx: _Context, task: _Task) -> None:
    """One image and target; an unexpected error marks it failed in the report, then goes on up (exit 3)."""
    try:
        _run_one(ctx, task)
    except Interrupted:
        raise
    except Exception as exc:
        task.run.status = "failed"
        task.run.error = f"unexpected error: {type(exc).__name__}: {exc}"
        task.run.checks.append(Check("imagekit", False, task.run.error))
        raise


def _run_one(ctx: _Context, task: _Task) -> None:
    """Build, verify, gate and record one image for one target (the build pipeline), then promote it."""
    run, plan_ = task.run, task.plan
    reasons = {lp.name: lp.reason for lp in plan_.layers}
    forced = {lp.name for lp in plan_.layers if lp.reason.startswith(FORCING)}
    t0 = time.monotonic()
    try:
        res = _build(ctx, task, forced)
    except BuildFailed as exc:
        where = "" if not exc.layer or exc.layer in str(exc) else f"layer {exc.layer}: "
        msg = f"{where}{exc}" + (f" (log: {exc.log_path})" if exc.log_path else "")
        if exc.log_tail:
            msg += "\n" + "\n".join(exc.log_tail[-10:])
        run.checks.append(Check("build", False, msg, round(time.monotonic() - t0, 1)))
        run.status, run.error = "failed", str(exc)
        return
    except Interrupted:
        raise  # the run is cancelled: nothing of this build is judged, recorded or promoted
    except ImagekitError as exc:
        run.checks.append(Check("build", False, "\n".join(exc.lines()), round(time.monotonic() - t0, 1)))
        run.status, run.error = "failed", str(exc)
        return
    run.built = [
        Rebuilt(task.image, task.target, lr.name, reasons.get(lr.name) or lr.reason)
        for lr in res.layers
        if lr.status == "built"
    ]
    run.size_bytes = res.size or None
    run.previous_id = task.previous.id if task.previous else None
    run.previous_size_bytes = task.previous.size_bytes if task.previous else None
    built_names = ", ".join(b.layer for b in run.built) or "nothing (every layer was already built)"
    run.checks.append(Check("build", True, f"built {built_names}", round(time.monotonic() - t0, 1)))
    _verify_check(task, res)
    if res.scan_passed is not None:
        run.checks.append(Check("scan gate", res.scan_passed, res.scan_failure or "passed"))
    if res.budget_passed is not None:
        run.checks.append(Check("size budget", res.budget_passed, res.budget))
    run.manifest_id = res.manifest_id or None
    mid = run.manifest_id
    new_build = _load_build(ctx, mid) if mid else None
    if new_build is not None and task.previous is not None:
        from imagekit.api.manifest import diff_builds

        with contextlib.suppress(ImagekitError, ValueError):
            run.diff = {k: v for k, v in diff_builds(task.previous, new_build).items() if k not in ("old", "new")}
    if any(not c.passed for c in run.checks):
        run.status = "failed"
        ctx.reporter(Event("fail", "failed; no channel moves", task.image, "", task.target))
        return
    run.status = "ok"
    if mid is None:
        run.checks.append(Check("record", False, "the build left no manifest in the store"))
        run.status = "failed"
        return
    for channel in [NIGHTLY_CHANNEL, *([ctx.promote] if ctx.promote and ctx.promote != NIGHTLY_CHANNEL else [])]:
        _promote(ctx, task, mid, channel)
    if any(not c.passed for c in run.checks):
        run.status = "failed"


def _verify_check(task: _Task, res: ImageResult) -> None:
    """The `verify` check and the figures of its report."""
    report = _read_json(res.verify_report)
    if report:
        task.run.verification = _figures(report)
    if res.verify_failures:
        task.run.checks.append(Check("verify", False, "; ".join(res.verify_failures)))
    elif res.verify_report:
        task.run.checks.append(Check("verify", True, f"report {res.verify_report}"))
    else:
        task.run.checks.append(Check("verify", False, "no verification report: the build was not verified"))


def _build(ctx: _Context, task: _Task, forced: set[str]) -> ImageResult:
    """The build pipeline for one image: verify, the size gate and the record included, failures left in it."""
    from imagekit.api.build import build

    builder = ctx.builder or build
    # now: the run's clock picks a refreshed root layer's base period, as it decided the refresh was due
    kwargs: dict[str, Any] = {}
    if ctx.engine is not None:
        kwargs["engine"] = ctx.engine
    if ctx.engine_kind is not None and TARGETS[task.target].engine is None:  # --target all: AMIs are packer's
        kwargs["engine_kind"] = ctx.engine_kind
    # a rehearsal concerns the targets that have one (the others build as they always do)
    rehearse = ctx.rehearse and TARGETS[task.target].rehearse is None
    out = builder(
        ctx.loaded.path, task.target, images=[task.image], reporter=ctx.reporter, rehearse=rehearse,
        force_layers=forced, layer_lock=ctx.locks, previous=lambda _image: task.previous, raise_failures=False,
        now=ctx.clock(), **kwargs,
    )  # fmt: skip
    res: ImageResult = out.images[0]
    return res


def _read_json(path: str) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    """The verification figures worth a line in report.md."""
    out: dict[str, Any] = {"seconds": report.get("seconds"), "gpu_visible": report.get("gpu_visible")}
    health = report.get("health") or {}
    if health:
        # the readiness wait as verify measured it (HealthResult.seconds_to_ready): the time-to-ready of the service
        out["time_to_ready_s"] = health.get("seconds_to_ready")
    smoke = report.get("smoke") or {}
    if smoke:
        out["smoke_status"] = smoke.get("status")
        out["smoke_latency_ms"] = smoke.get("latency_ms")
        out["smoke_bytes"] = smoke.get("bytes")
    return {k: v for k, v in out.items() if v is not None}


def _load_build(ctx: _Context, mid: str) -> BuildRecord | None:
    try:
        return Ledger(ctx.store, resolve_trust(ctx.loaded)).build(mid).build
    except (StoreError, SignatureError):
        return None


def _promote(ctx: _Context, task: _Task, mid: str, channel: str) -> None:
    from imagekit.api.manifest import promote

    try:
        promote(
            ctx.loaded.path, task.image, mid, channel, why="imagekit nightly", who="imagekit nightly",
            allow_rehearsal=ctx.rehearse,
        )  # fmt: skip
    except ImagekitError as exc:
        task.run.checks.append(Check(f"promote {channel}", False, str(exc)))
        return
    task.run.channels.append(channel)
    task.run.checks.append(Check(f"promote {channel}", True, f"{channel} -> {mid}"))
    ctx.reporter(Event("done", f"{channel} -> {mid}", task.image, "", task.target))


def _gc(ctx: _Context, tasks: list[_Task]) -> list[dict[str, Any]]:
    """Retention after the builds, each target's own (docker: untag; ami: deregister), rows for report.json."""
    from imagekit.retention import gc_for

    out: list[dict[str, Any]] = []
    for target in TARGETS:
        images = sorted({t.image for t in tasks if t.target == target})
        for name in images:
            keep = ctx.loaded.spec.images[name].keep or ctx.loaded.spec.retention.keep
            try:
                rehearse = ctx.rehearse and TARGETS[target].rehearse is None
                kind = ctx.engine_kind if TARGETS[target].engine is None else None
                res = gc_for(
                    ctx.loaded, target, image=name, rehearse=rehearse, engine=ctx.engine, engine_kind=kind,
                    reporter=ctx.reporter,
                )  # fmt: skip
            except ImagekitError as exc:
                out.append({"image": name, "target": target, "keep": keep, "error": str(exc)})
                continue
            out += res.rows()
    return out
