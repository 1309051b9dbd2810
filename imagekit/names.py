"""Names several layers of imagekit share: tags, labels, paths inside an image, context folders. Pure.

The renderers, the planner, the targets, the verify hosts and retention all need to agree on these; keeping them
here means none of them has to import another one (or a runner) just to spell a tag or a path.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

from imagekit.spec import Bootstrap

# --- labels and tags ----------------------------------------------------------------------------------------

LABEL_PREFIX = "dev.imagekit"  # image labels the rendered Dockerfile and the docker target write


def layer_repository(spec_name: str, layer: str) -> str:
    """`imagekit/<spec name>-<layer>`: where a layer's image is tagged by its hash."""
    return f"imagekit/{spec_name}-{layer}"


def layer_tag(spec_name: str, layer: str, digest: str) -> str:
    """`imagekit/<spec name>-<layer>:<hash16>`."""
    return f"{layer_repository(spec_name, layer)}:{digest[:16]}"


def image_tag(repository: str, leaf_hash: str) -> str:
    """`<repository>:<leaf hash16>`: the final image of a build."""
    return f"{repository}:{leaf_hash[:16]}"


# --- bootstrapped bases -------------------------------------------------------------------------------------

# Bump when the bootstrap recipe (packages, changes, tar options) changes so every base is made again.
BOOTSTRAP_RECIPE = "2"  # 2: apt sources with -updates and -security
MIRRORS = {"debian": "http://deb.debian.org/debian", "ubuntu": "http://archive.ubuntu.com/ubuntu"}
# What every later layer's provisioning scripts rely on: python3 + venv for pip, CA certificates for HTTPS.
BASE_PACKAGES = ("ca-certificates", "python3", "python3-venv")


def base_definition(boot: Bootstrap, epoch: int | None = None) -> dict[str, object]:
    """Everything that decides the content of a bootstrapped base (and, for a refreshed layer, its period)."""
    doc: dict[str, object] = {
        "distro": boot.distro,
        "suite": boot.suite,
        "mirror": boot.mirror or MIRRORS[boot.distro],
        "packages": sorted({*BASE_PACKAGES, *boot.packages}),
        "variant": "minbase",
        "recipe": BOOTSTRAP_RECIPE,
    }
    if epoch is not None:
        doc["refresh_epoch"] = epoch
    return doc


def refresh_epoch(every_days: int, now: datetime) -> int:
    """The N-day period `now` falls in. A refresh is due only after N days, so it always lands in a new period."""
    return int(now.timestamp() // (every_days * 86400))


def base_hash(boot: Bootstrap, epoch: int | None = None) -> str:
    """sha256 of the base's definition (canonical JSON)."""
    blob = json.dumps(base_definition(boot, epoch), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def apt_sources(boot: Bootstrap) -> str:
    """sources.list of a bootstrapped base: the suite, its -updates and its security suite, all from the mirror.

    debootstrap writes the release suite alone, on which `apt-get upgrade` finds no security fix.
    """
    mirror = (boot.mirror or MIRRORS[boot.distro]).rstrip("/")
    lines = [f"deb {mirror} {boot.suite} main", f"deb {mirror} {boot.suite}-updates main"]
    if boot.distro == "ubuntu":
        lines.append(f"deb {mirror} {boot.suite}-security main")
    elif mirror.endswith("/debian"):
        # Debian serves security updates beside the archive on the same host: <host>/debian-security
        lines.append(f"deb {mirror}-security {boot.suite}-security main")
    return "\n".join(lines) + "\n"


def base_repository(layer: str) -> str:
    """The repository a bootstrapped base of a root layer is tagged in (the Dockerfile's BASE_IMAGE default)."""
    return f"imagekit-base-{layer}"


def base_tag(layer: str, boot: Bootstrap) -> str:
    """`imagekit-base-<layer>:<hash16>`."""
    return f"{base_repository(layer)}:{base_hash(boot)[:16]}"


# --- paths inside the image or VM ---------------------------------------------------------------------------

VENV = "/opt/venv"
# The build arg every Dockerfile stage declares: `--force` and a refresh pass a new value, so every RUN runs again
# while the package cache mounts stay (BuildKit's --no-cache would empty them too: moby/buildkit#1213).
REBUILD_ARG = "IMAGEKIT_REBUILD"
# The build arg only a `<layer>-lock` stage declares. BuildKit gets no value (the stage is keyed by the lock's content);
# the buildah engine passes a new one on every build, so the stage is never taken from buildah's cache: buildah 1.28
# cannot bind-mount a cached stage (containers/buildah#4375) and keys no RUN by the content it mounts.
LOCK_RUN_ARG = "IMAGEKIT_LOCK_RUN"
# Where the spec's files (copy sources, requirements lock, local weights) are found while a script runs: the
# Packer template uploads them there, the Dockerfile bind-mounts the lock there.
SRC_DIR = "/tmp/imagekit/src"  # noqa: S108 - a path on the machine being provisioned
SYSTEMD_DIR = "/etc/systemd/system"
WANTS_DIR = f"{SYSTEMD_DIR}/multi-user.target.wants"


def service_unit_path(image: str) -> str:
    """Where an image's systemd unit lives on the AMI."""
    return f"{SYSTEMD_DIR}/imagekit-{image}.service"


def prewarm_paths(image: str) -> tuple[str, str]:
    """The AMI's pre-read step (aws.prewarm) for an image: its script and the JSON it writes (seconds, files, bytes)."""
    return f"/usr/local/lib/imagekit/prewarm-{image}.sh", f"/var/lib/imagekit/prewarm-{image}.json"


# --- this machine and the build context ---------------------------------------------------------------------

DEFAULT_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Context-relative folders the docker build uses (the build context is the spec folder).
RENDER_DIR = ".imagekit/render"
SCRIPTS_PREFIX = f"{RENDER_DIR}/provision"
WHEELHOUSE_DIR = ".imagekit/wheelhouse"
# Fetched remote weights sit in the build context under this folder, named by their sha256.
MODELS_DIR = ".imagekit/models"


def nvidia_require_cuda(cuda: str | None) -> str | None:
    """The NVIDIA_REQUIRE_CUDA a GPU image carries (`cuda>=13.0`), as NVIDIA's own CUDA images do: the NVIDIA
    container runtime then refuses to start it on a host driver too old for that CUDA. None for CPU images."""
    if not cuda or cuda.strip().lower() == "none":
        return None
    return "cuda>=" + ".".join(cuda.strip().split(".")[:2])
