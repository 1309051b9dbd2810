"""Reasons to rebuild a layer whose hash is already built: a scheduled refresh, or an upstream base that moved."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from imagekit.events import Event, Reporter, silent
from imagekit.manifest.statement import BuildRecord
from imagekit.spec import LoadedSpec

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real clock (tests inject another)."""
    return datetime.now(timezone.utc)


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time from a manifest, as an aware UTC datetime (None when absent or garbled)."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


class DockerResolver(Protocol):
    """What drift needs from the engine: the digest a reference resolves to at its registry now."""

    def registry_digest(self, ref: str) -> str: ...


class AmiResolver(Protocol):
    """What drift needs from EC2: the newest AMI id a name filter selects now."""

    def newest_ami(self, region: str, name: str, owners: tuple[str, ...], architecture: str) -> str | None: ...


def base_dependency(build: BuildRecord) -> tuple[str, str]:
    """(uri, sha256) of the `base` resolved dependency a build recorded; empty strings when it has none."""
    deps = build.predicate.get("buildDefinition", {}).get("resolvedDependencies", [])
    for dep in deps:
        if isinstance(dep, dict) and dep.get("name") == "base":
            uri = str(dep.get("uri", ""))
            digest = str(dep.get("digest", {}).get("sha256", ""))
            if not digest and "sha256:" in uri:
                # `oci:repo@sha256:<hex>`, or a bare `oci:sha256:<hex>` when the build recorded only the digest
                digest = uri.rsplit("sha256:", 1)[1]
            return uri, digest
    return "", ""


@dataclass
class StaleChecker:
    """A plan stale_check: `refresh due` (layer.refresh.every_days) and `upstream changed` (from.docker/from.ami).

    `builds` are the store's verified builds, oldest first. Upstream answers are cached per reference for one run;
    an unreachable upstream is reported once as a warning and treated as unchanged.
    """

    loaded: LoadedSpec
    builds: list[BuildRecord]
    clock: Clock = utc_now
    docker: DockerResolver | None = None
    ami: AmiResolver | None = None
    reporter: Reporter = silent
    # layer hashes revoked and not rebuilt since (manifest.record.revoked_layers): hash -> why
    revoked: dict[str, str] = field(default_factory=dict)
    _upstream: dict[str, str | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def last_build(self, target: str, layer_hash: str) -> BuildRecord | None:
        """The newest verified build of this target whose chain holds this layer hash."""
        found = None
        for b in self.builds:
            if b.target == target and any(h == layer_hash for _, h in b.layers):
                found = b
        return found

    def __call__(self, image: str, target: str, layer: str, layer_hash: str) -> str | None:
        if layer_hash in self.revoked:
            # the same hash would reuse the revoked image or AMI: it is built again from scratch
            return f"revoked layer, rebuilt from scratch ({self.revoked[layer_hash]})"
        last = self.last_build(target, layer_hash)
        if last is None:
            return None  # never built: the plan already says "not built yet"
        spec_layer = self.loaded.spec.layers[layer]
        if spec_layer.refresh is not None:
            why = self.refresh_due(last, spec_layer.refresh.every_days)
            if why:
                return why
        src = spec_layer.from_
        if src is None or spec_layer.parent is not None:
            return None
        if target == "docker" and src.docker:
            return self._docker_drift(image, layer, src.docker, last)
        if target == "ami" and src.ami is not None:
            return self._ami_drift(image, layer, last)
        return None

    def refresh_due(self, last: BuildRecord, every_days: int) -> str | None:
        """`refresh due (...)` when the last build finished more than every_days ago."""
        finished = parse_time(last.created)
        if finished is None:
            return None
        age = self.clock() - finished
        if age < timedelta(days=every_days):
            return None
        return f"refresh due (last built {finished:%Y-%m-%d %H:%M}Z in {last.id}, every {every_days} days)"

    def _cached(self, key: str, ask: Callable[[], str | None]) -> str | None:
        with self._lock:
            if key in self._upstream:
                return self._upstream[key]
        value = ask()
        with self._lock:
            self._upstream[key] = value
        return value

    def _docker_drift(self, image: str, layer: str, ref: str, last: BuildRecord) -> str | None:
        _uri, recorded = base_dependency(last)
        if not recorded or self.docker is None:
            return None
        resolver = self.docker

        def ask() -> str | None:
            try:
                return resolver.registry_digest(ref)
            except Exception as exc:  # any failure to reach the registry means: unknown, keep what we have
                self.reporter(
                    Event("warn", f"cannot reach the registry of {ref} ({_short(exc)}); treated as unchanged",
                          image, layer, "docker")
                )  # fmt: skip
                return None

        now = self._cached(f"docker:{ref}", ask)
        if now is None:
            return None
        now_hex = now.split("sha256:", 1)[-1]
        if now_hex == recorded:
            return None
        return f"upstream changed ({ref} now sha256:{now_hex[:12]}, built from sha256:{recorded[:12]} in {last.id})"

    def _ami_drift(self, image: str, layer: str, last: BuildRecord) -> str | None:
        src = self.loaded.spec.layers[layer].from_
        assert src is not None and src.ami is not None
        uri, _digest = base_dependency(last)
        recorded = uri.rsplit(":", 1)[-1] if uri else ""
        if not recorded.startswith("ami-") or self.ami is None:
            return None
        region = self.loaded.spec.aws.region
        flt = src.ami
        resolver = self.ami

        def ask() -> str | None:
            try:
                return resolver.newest_ami(region, flt.name, flt.owners, flt.architecture)
            except Exception as exc:  # unreachable EC2: unknown, keep what we have
                self.reporter(
                    Event("warn", f"cannot ask EC2 in {region} for {flt.name!r} ({_short(exc)}); treated as unchanged",
                          image, layer, "ami")
                )  # fmt: skip
                return None

        now = self._cached(f"ami:{region}:{flt.name}:{','.join(flt.owners)}:{flt.architecture}", ask)
        if now is None or now == recorded:
            return None
        return f"upstream changed ({flt.name!r} now selects {now}, built from {recorded} in {last.id})"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


class EngineResolver:
    """Registry digests through the image engine a build uses (the Docker Engine, or skopeo for buildah): the
    registry is asked, nothing is pulled."""

    def __init__(self, engine: Any = None, kind: str = "docker") -> None:
        self._engine = engine
        self._kind = kind

    def registry_digest(self, ref: str) -> str:
        """The manifest digest `ref` resolves to at its registry now."""
        if self._engine is None:
            from imagekit.targets.engines import open_engine

            self._engine = open_engine(self._kind)
        return str(self._engine.registry_digest(ref))


class Ec2Resolver:
    """The newest AMI a name filter selects, through imagekit's boto3 wrapper."""

    def __init__(self, aws: Any = None) -> None:
        self._aws = aws

    def newest_ami(self, region: str, name: str, owners: tuple[str, ...], architecture: str) -> str | None:
        """The id of the newest available AMI named like `name` among `owners`."""
        aws = self._aws
        if aws is None:
            from imagekit.runners.aws import Aws

            aws = self._aws = Aws()
        result: str | None = aws.newest_ami(region, name, owners, architecture)
        return result


def matrix_news(lookup: Callable[[], tuple[list[str] | None, str]] | None = None) -> dict[str, Any]:
    """For the nightly report: torch releases the index has that the compatibility matrix lacks.

    One look-up of the index (cached for a day, see runners/pypi.py); an unreachable index is said, never raised.
    """
    from imagekit import compat
    from imagekit.runners import pypi

    versions, source = (lookup or pypi.torch_versions_cached)()
    fresh = compat.freshness(versions, source)
    return {
        "checked": fresh.checked,
        "missing": list(fresh.missing),
        "newest_known": fresh.newest_known,
        "source": fresh.source,
        "summary": fresh.summary(),
        "regenerate": compat.REGENERATE,
    }
