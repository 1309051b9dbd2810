"""`imagekit nightly --collect`: the last step of a nightly run fanned out on a CI engine.

The plan job printed the stale jobs (`plan --matrix`) and the time it started; one `imagekit build --image I
--target T` per job recorded its signed build in the shared store. Collect plans again exactly as the plan job did
(the store's verified builds from before that time, refresh due as of that time), takes each job's record of this
run from the store (the newest record of that image and target with the planned leaf hash, made since then),
moves `nightly` and `--promote` only for jobs whose record verified, runs gc and writes the nightly reports.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from pathlib import Path

from imagekit.errors import ImagekitError, UsageError
from imagekit.events import Event, Reporter, silent
from imagekit.locking import store_lock
from imagekit.manifest.ledger import Ledger, resolve_trust, spec_store
from imagekit.manifest.record import verified_builds
from imagekit.manifest.statement import BuildRecord
from imagekit.manifest.store import Store
from imagekit.nightly.report import Check, NightlyResult, Rebuilt, write_reports
from imagekit.nightly.run import (
    NIGHTLY_CHANNEL,
    LayerLocks,
    _Context,
    _figures,
    _gc,
    _promote,
    _Task,
    check_night_engine,
    night_plans,
)
from imagekit.nightly.staleness import AmiResolver, Clock, DockerResolver, matrix_news, parse_time, utc_now
from imagekit.spec import LoadedSpec
from imagekit.timefmt import iso_utc


def parse_since(text: str) -> datetime:
    """The plan job's start time (ISO 8601, UTC when no zone is given); UsageError naming the format."""
    when = parse_time(text.strip())
    if when is None:
        raise UsageError(f"--since {text!r} is not an ISO 8601 time; pass the plan job's `date -u +%Y-%m-%dT%H:%M:%SZ`")
    return when


def collect_nightly(
    path: Path | str | None,
    *,
    since: datetime,
    target: str = "all",
    promote: str | None = None,
    report_dir: Path | None = None,
    rehearse: bool = False,
    reporter: Reporter = silent,
    clock: Clock = utc_now,
    docker_resolver: DockerResolver | None = None,
    ami_resolver: AmiResolver | None = None,
    engine: object = None,
    engine_kind: str | None = None,
) -> NightlyResult:
    """Promote, gc and report the jobs of a fanned-out nightly run from their records in the store (engine_kind:
    the engine the jobs built with, whose drift checks and gc this run does)."""
    from imagekit.api.manifest import _check_channel
    from imagekit.api.spec import validate

    if target not in ("docker", "ami", "all"):
        raise UsageError(f"--target must be docker, ami or all, not {target!r}")
    check_night_engine(engine_kind, target)
    if promote:
        _check_channel(promote)
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    loaded = validate(path)
    store = spec_store(loaded)
    result = NightlyResult(spec=str(loaded.path), started=iso_utc(since))
    result.matrix = matrix_news()
    cut = iso_utc(since)
    with store_lock(store.url, reporter=reporter, what=f"imagekit nightly --collect {loaded.path}"):
        builds = verified_builds(loaded, store=store, rehearsal=rehearse)
        before = [b for b in builds if b.created < cut]
        # the plan job's view: what was verified before it started, refresh due as of then
        plans = night_plans(
            loaded, store, before, target=target, clock=lambda: since, reporter=reporter, rehearse=rehearse,
            docker_resolver=docker_resolver, ami_resolver=ami_resolver, engine=engine, engine_kind=engine_kind,
        )  # fmt: skip
        if not plans:
            raise UsageError(f"no image in {loaded.file} builds for target {target}")
        this_run = _records_since(loaded, store, cut, rehearse)
        ctx = _Context(loaded, store, reporter, promote, rehearse, since, LayerLocks(), engine, engine_kind=engine_kind)
        tasks: list[_Task] = []
        attributed: set[tuple[str, str]] = set()  # (target, layer hash): a layer shared by jobs is built once
        for p in plans:
            previous = next((b for b in reversed(before) if b.image == p.name and b.target == p.target), None)
            task = _Task(p.name, p.target, p, previous)
            tasks.append(task)
            record = this_run.get((p.name, p.target, p.layers[-1].hash))
            stale = [lp for lp in p.layers if lp.status == "stale"]
            run = task.run
            if record is None and not stale:
                run.checks.append(Check("up to date", True, f"all {len(p.layers)} layers cached"))
                run.manifest_id = previous.id if previous else None
                run.size_bytes = previous.size_bytes if previous else None
                reporter(Event("cached", f"up to date ({p.layers[-1].reason})", p.name, "", p.target))
                continue
            run.previous_id = previous.id if previous else None
            run.previous_size_bytes = previous.size_bytes if previous else None
            if record is None:
                first = stale[0]
                run.checks.append(
                    Check("build", False,
                          f"no record of this run's build of {p.name}/{p.target} in {store.url} since {cut} (stale "
                          f"from {first.name}: {first.reason}); the job failed before recording or was cancelled: "
                          "see its log")
                )  # fmt: skip
                run.status, run.error = "failed", "the build job left no record"
                reporter(Event("fail", "no record of this run's build; no channel moves", p.name, "", p.target))
                continue
            for lp in stale:
                if (p.target, lp.hash) not in attributed:
                    attributed.add((p.target, lp.hash))
                    run.built.append(Rebuilt(p.name, p.target, lp.name, lp.reason))
            _judge(ctx, task, record)
        for task in tasks:
            if task.run.status == "ok" and task.run.manifest_id:
                channels = [NIGHTLY_CHANNEL, *([promote] if promote and promote != NIGHTLY_CHANNEL else [])]
                for channel in channels:
                    _promote(ctx, task, task.run.manifest_id, channel)
                if any(not c.passed for c in task.run.checks):
                    task.run.status = "failed"
        result.runs = [t.run for t in tasks]
        result.gc = _gc(ctx, tasks)
    result.finished = iso_utc(clock())
    if report_dir is not None:
        write_reports(result, Path(report_dir))
    return result


def _records_since(
    loaded: LoadedSpec, store: Store, cut: str, rehearse: bool
) -> dict[tuple[str, str, str], BuildRecord]:
    """(image, target, leaf hash) -> the newest signed record made since `cut`, verified or not, not revoked."""
    out: dict[tuple[str, str, str], BuildRecord] = {}
    for e in Ledger(store, resolve_trust(loaded)).entries(with_channels=False):
        b = e.build
        if b is None or e.revoked or b.created < cut or b.rehearsal != rehearse:
            continue
        out[(b.image, b.target, b.leaf_hash)] = b  # entries come oldest first: the newest wins
    return out


def _judge(ctx: _Context, task: _Task, record: BuildRecord) -> None:
    """The checks a nightly run makes of one build, read from its signed record."""
    run = task.run
    seconds = 0.0
    meta = record.predicate.get("runDetails", {}).get("metadata", {})
    started, finished = parse_time(str(meta.get("startedOn", ""))), parse_time(record.created)
    if started and finished:
        seconds = round((finished - started).total_seconds(), 1)
    names = ", ".join(b.layer for b in run.built) or "nothing (every layer was already built)"
    run.checks.append(Check("build", True, f"built {names} (record {record.id})", seconds))
    report = None
    with contextlib.suppress(ImagekitError, ValueError):
        report = record.report()
    if report:
        run.verification = _figures(report)
    budget = [f for f in record.failures if f.startswith("size budget")]
    failures = [f for f in record.failures if not f.startswith("size budget")]
    if record.passed:
        run.checks.append(Check("verify", True, f"verified, record {record.id}"))
    else:
        run.checks.append(Check("verify", not failures, "; ".join(failures) or "verified"))
    if budget:
        run.checks.append(Check("size budget", False, "; ".join(budget)))
    run.manifest_id = record.id
    run.size_bytes = record.size_bytes
    if task.previous is not None:
        from imagekit.api.manifest import diff_builds

        with contextlib.suppress(ImagekitError, ValueError):
            run.diff = {k: v for k, v in diff_builds(task.previous, record).items() if k not in ("old", "new")}
    if all(c.passed for c in run.checks) and record.passed:
        run.status = "ok"
    else:
        run.status = "failed"
        ctx.reporter(Event("fail", "failed; no channel moves", task.image, "", task.target))
