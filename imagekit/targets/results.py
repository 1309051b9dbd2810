"""What a build did, as data: one set of result types for every target (the CLI prints them; --json dumps them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass
class LayerResult:
    """One layer of a built image: its hash, its artifact, and whether this run built it or reused it.

    `tag` names the artifact: a docker tag (`imagekit/<spec>-<layer>:<hash16>`) or `<region>:<ami-id>`;
    `amis` holds an AMI layer's id per region (empty for docker).
    """

    name: str
    hash: str
    tag: str
    status: Literal["built", "reused"]
    seconds: float
    image_id: str = ""
    reason: str = ""
    amis: dict[str, str] = field(default_factory=dict)
    log_path: str = ""


@dataclass
class BaseResult:
    """Where the root layer started: a bootstrapped base, a docker reference or an AMI, with what it resolved to."""

    kind: Literal["bootstrap", "docker", "ami"]
    ref: str
    image_id: str
    digest: str = ""
    built: bool = False
    seconds: float = 0.0


@dataclass
class ImageResult:
    """One image built for one target, its verification, size gate and signed record."""

    image: str
    target: str
    layers: list[LayerResult] = field(default_factory=list)
    ref: str = ""
    tags: list[str] = field(default_factory=list)
    release_tags: list[str] = field(default_factory=list)  # --tag values, recorded in the signed manifest
    image_id: str = ""
    size: int = 0
    repo_digest: str = ""
    pushed: str = ""
    amis: dict[str, str] = field(default_factory=dict)
    rehearsal: bool = False
    base: BaseResult | None = None
    log_path: str = ""
    verify_report: str = ""
    verify_failures: list[str] = field(default_factory=list)
    verify_error: str = ""
    budget: str = ""
    budget_passed: bool | None = None
    # the scan gate (verify.scan): its signed predicate, its verdict, the failure naming what blocked
    scan: dict[str, Any] | None = None
    scan_passed: bool | None = None
    scan_failure: str = ""
    # model dest -> signer, key, signature_sha256 of each signed model that verified before the build
    model_signatures: dict[str, dict[str, str]] = field(default_factory=dict)
    manifest_id: str = ""
    manifest_path: str = ""
    manifest_passed: bool | None = None
    attestations: str = ""
    started: str = ""
    finished: str = ""
    seconds: float = 0.0

    @property
    def built_layers(self) -> list[str]:
        """Names of the layers this run built (not reused)."""
        return [lr.name for lr in self.layers if lr.status == "built"]


@dataclass
class BuildResult:
    """What `imagekit build` did, as data (the CLI prints it; `--json` dumps `to_json()`)."""

    spec: str
    target: str
    images: list[ImageResult] = field(default_factory=list)
    builders: dict[str, str] = field(default_factory=dict)
    layer_builds: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return asdict(self)

    def image(self, name: str) -> ImageResult:
        """The result of one image by name."""
        return next(r for r in self.images if r.image == name)
