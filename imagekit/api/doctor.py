"""doctor: what this machine has, judged against what a spec's targets need."""

from __future__ import annotations

import shutil
from pathlib import Path

from imagekit.doctor import diagnose
from imagekit.doctor_report import Report
from imagekit.spec import find_spec, load_spec


def doctor(
    path: Path | str | None = None, *, rehearse: bool = False, push: str | None = None, engine: str | None = None
) -> Report:
    """Check the tools for a spec (-f, else ./imagekit.yaml when there is one, else a docker build in general);
    engine (docker|buildah) overrides the spec's build.engine."""
    from imagekit.targets.engines import check_engine

    if engine is not None:
        check_engine(engine)
    loaded = load_spec(path) if path is not None or find_spec(None).is_file() else None
    engine = engine or (loaded.spec.build.engine if loaded is not None else "docker")
    extra = []
    if engine == "buildah":
        from imagekit.doctor_daemonless import daemonless_checks
        from imagekit.runners import process

        extra = daemonless_checks(process.capture, shutil.which)
    return diagnose(loaded, rehearse=rehearse, push=push, engine=engine, extra=extra)
