"""The AMI pipeline with no AWS account: a moto server plays EC2, sshd containers play instances.

When Packer creates an AMI in moto, the provisioned container is committed to `imagekit-rehearsal-ami:<ami-id>`;
the next layer's "instance" and the verification boot start from that image, so the layered chain is real.
moto keeps nothing between runs, so the AMIs a rehearsal made are kept in <spec folder>/.imagekit/rehearsal/ec2.json
and seeded into the next run's moto (same ids, same tags), next to the committed images in the Docker engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagekit.errors import BuildFailed, ImagekitError, ToolMissing
from imagekit.fsutil import atomic_write
from imagekit.runners import process
from imagekit.runners.aws import Aws, Endpoint
from imagekit.runners.docker import cli as docker_cli

AMI_REPO = "imagekit-rehearsal-ami"
SSHD_REPO = "imagekit-rehearsal-sshd"
LABEL = "imagekit.rehearsal"
ACCESS_KEY = "imagekit-rehearsal"
SECRET_KEY = "imagekit-rehearsal-not-a-secret"  # noqa: S105 - moto accepts any credentials; never a real key

# Turn a base image into an "instance": sshd that accepts whatever key Packer's temporary key pair offers
# (AuthorizedKeysCommand echoes it), plus sudo, python3 and curl, which Ubuntu's cloud images also carry.
SSHD_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
RUN set -eu; export DEBIAN_FRONTEND=noninteractive; \\
    if ! command -v sshd >/dev/null || ! command -v sudo >/dev/null || ! command -v python3 >/dev/null \\
       || ! command -v curl >/dev/null; then \\
      apt-get update && apt-get install -y --no-install-recommends openssh-server sudo python3 curl ca-certificates \\
      && rm -rf /var/lib/apt/lists/*; \\
    fi; \\
    printf '#!/bin/sh\\necho "$1 $2"\\n' > /usr/local/sbin/imagekit-any-key; \\
    chmod 755 /usr/local/sbin/imagekit-any-key; \\
    mkdir -p /etc/ssh/sshd_config.d /run/sshd; \\
    printf 'AuthorizedKeysCommand /usr/local/sbin/imagekit-any-key %%t %%k\\nAuthorizedKeysCommandUser nobody\\n\
PermitRootLogin prohibit-password\\nUseDNS no\\n' > /etc/ssh/sshd_config.d/imagekit-rehearsal.conf; \\
    grep -q '^Include /etc/ssh/sshd_config.d' /etc/ssh/sshd_config \\
      || cat /etc/ssh/sshd_config.d/imagekit-rehearsal.conf >> /etc/ssh/sshd_config; \\
    ssh-keygen -A
EXPOSE 22
CMD ["/usr/sbin/sshd", "-D", "-e"]
"""


def _docker(*args: str, log: Path | None = None, timeout: float | None = 600, cleanup: bool = False) -> process.Result:
    return docker_cli(*args, log=log, timeout=timeout, cleanup=cleanup)


def ami_image(ami_id: str) -> str:
    """The Docker image that stands for a rehearsal AMI."""
    return f"{AMI_REPO}:{ami_id}"


def image_exists(ref: str) -> bool:
    """True when the Docker engine has this image."""
    return _docker("image", "inspect", "--format", "{{.Id}}", ref).ok


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def published_port(lines: list[str]) -> int | None:
    """The host port in `docker port` output (`127.0.0.1:49153`), ignoring any other line."""
    for line in lines:
        host, sep, port = line.strip().rpartition(":")
        if sep and host and port.isdigit():
            return int(port)
    return None


@dataclass
class Instance:
    """An sshd container standing in for an EC2 instance."""

    container: str
    port: int


class RehearsalEc2:
    """A started moto server, the docker side of the stand-in instances, and the persisted EC2 state."""

    def __init__(self, state_dir: Path, region: str, log: Path, copies: tuple[str, ...] = ()) -> None:
        self.state_dir = state_dir
        self.region = region
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.url = ""
        self.server: process.Process | None = None
        self.aws = Aws()
        self.regions: set[str] = {region, *copies}
        self._log_fh: object = None
        self._extra: list[dict[str, object]] = []

    # --- moto -------------------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        """The persisted AMIs of earlier rehearsals of this spec."""
        return self.state_dir / "ec2.json"

    def _seeds(self) -> list[dict[str, object]]:
        try:
            doc = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [a for a in doc.get("amis", []) if isinstance(a, dict)] if isinstance(doc, dict) else []

    def start(self) -> None:
        """Start moto (seeded with earlier rehearsals' AMIs) on a free local port and wait until it answers."""
        from imagekit.extras import require

        require("rehearsal", "--rehearse")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        seeds = self._seeds()
        known = {a.get("ami_id") for a in seeds}
        seeds += [a for a in self._extra if a["ami_id"] not in known]
        self.regions |= {str(a.get("region")) for a in seeds if a.get("region")}
        seed_path = self.state_dir / "moto-seed.json"
        atomic_write(seed_path, json.dumps(seeds, sort_keys=True).encode())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            "IMAGEKIT_REHEARSAL_SEED": str(seed_path),
            # moto's own default AMIs are not needed: the chain starts from a seeded stand-in
            "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
        }
        self.log.parent.mkdir(parents=True, exist_ok=True)
        fh = self.log.open("a", encoding="utf-8")
        self._log_fh = fh
        argv = [sys.executable, "-m", "imagekit.targets.ami.motoserver", "-H", "127.0.0.1", "-p", str(self.port)]
        self.server = process.Process(argv, env=env, log=fh)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.popen.poll() is not None:
                raise BuildFailed(
                    "the rehearsal's moto server did not start", log_tail=list(self.server.tail), log_path=str(self.log)
                )
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):  # noqa: S310
                break
            time.sleep(0.2)
        else:
            raise BuildFailed("the rehearsal's moto server did not answer within 60 s", log_path=str(self.log))
        self.aws = Aws(Endpoint(url=self.url, access_key=ACCESS_KEY, secret_key=SECRET_KEY))

    def save(self) -> None:
        """Persist every AMI moto holds now, so the next rehearsal finds them (reuse, gc)."""
        amis: list[dict[str, object]] = []
        for region in sorted(self.regions):
            for ami in self.aws.describe_images(region):
                amis.append(
                    {
                        "region": region,
                        "ami_id": ami.id,
                        "name": ami.name,
                        "creation_date": ami.created,
                        "tags": dict(sorted(ami.tags.items())),
                    }
                )
        amis.sort(key=lambda a: (str(a["region"]), str(a["ami_id"])))
        # what a build left running in the emulator (a clean run, or a cancel, leaves nothing)
        leftovers = {r: self.aws.leftovers(r) for r in sorted(self.regions)}
        doc = {"amis": amis, "leftovers": {r: v for r, v in leftovers.items() if any(v.values())}}
        atomic_write(self.state_file, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())

    def stop(self) -> None:
        """Save state, then stop moto."""
        try:
            if self.server is not None and self.server.popen.poll() is None:
                self.save()
        finally:
            if self.server is not None and self.server.popen.poll() is None:
                self.server.cancel(grace=5)
            fh = self._log_fh
            if fh is not None:
                fh.close()  # type: ignore[attr-defined]

    def packer_env(self) -> dict[str, str]:
        """Environment for packer: dummy credentials only, no profile, no real endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_SESSION_TOKEN": "",
            "AWS_PROFILE": "",
            "AWS_DEFAULT_PROFILE": "",
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    # --- docker "instances" -----------------------------------------------------------------------------

    def sshd_image(self, base: str) -> str:
        """Build (once) an sshd image from a base image; returns its tag."""
        digest = _docker("image", "inspect", "--format", "{{.Id}}", base)
        if not digest.ok:
            raise ToolMissing(f"the rehearsal base image {base} is not in the Docker engine (build the docker target)")
        tag = f"{SSHD_REPO}:{hashlib.sha256(digest.output.strip().encode()).hexdigest()[:16]}"
        if image_exists(tag):
            return tag
        ctx = self.state_dir / "sshd-context"
        ctx.mkdir(parents=True, exist_ok=True)
        atomic_write(ctx / "Dockerfile", SSHD_DOCKERFILE.encode())
        argv = ["build", "--build-arg", f"BASE={base}", "--label", f"{LABEL}=sshd", "-t", tag, str(ctx)]
        res = docker_cli(*argv, env={"DOCKER_BUILDKIT": "1"}, log=self.log, timeout=None)
        if not res.ok:
            raise BuildFailed("could not build the rehearsal's sshd image", log_tail=res.tail, log_path=str(self.log))
        return tag

    def standin_ami(self, base: str, layer: str) -> str:
        """A stand-in for the distribution AMI the root layer starts from, backed by the base image; before start()."""
        image = self.sshd_image(base)
        image_id = _docker("image", "inspect", "--format", "{{.Id}}", image).output.strip()
        ami_id = "ami-" + hashlib.sha256(image_id.encode()).hexdigest()[:17]
        self._extra.append(
            {
                "region": self.region,
                "ami_id": ami_id,
                "name": f"imagekit-rehearsal-standin-{layer}-{ami_id[4:12]}",
                "creation_date": "2000-01-01T00:00:00.000Z",
                "tags": {"imagekit:rehearsal-standin": base},
            }
        )
        _docker("tag", image, ami_image(ami_id))
        return ami_id

    def boot(self, ami_id: str, name: str) -> Instance:
        """Start the container for an instance booted from an AMI; returns where its sshd listens."""
        image = ami_image(ami_id)
        if not image_exists(image):
            raise BuildFailed(
                f"rehearsal AMI {ami_id} has no image {image} in the Docker engine; "
                "run the rehearsal with --force to rebuild the chain"
            )
        res = _docker(
            "run", "-d", "--label", f"{LABEL}=instance", "--name", name, "-p", "127.0.0.1::22", image, log=self.log
        )
        if not res.ok:
            raise BuildFailed(f"could not start the rehearsal instance from {image}", log_tail=res.tail)
        container = res.output.strip().splitlines()[-1]
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            # a loaded engine may print a warning line too (the CLI merges stderr): take the host:port line only
            port = published_port(_docker("port", container, "22/tcp").output.splitlines())
            if port is None:
                time.sleep(0.5)
        if port is None:
            _docker("rm", "-f", "-v", container, log=self.log)
            raise BuildFailed(f"the rehearsal instance from {image} published no SSH port (docker port {container})")
        self._wait_ssh(port)
        return Instance(container, port)

    @staticmethod
    def _wait_ssh(port: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(4).startswith(b"SSH"):
                    return
            time.sleep(0.2)

    def commit(self, instance: Instance, ami_ids: list[str]) -> None:
        """The rehearsal's CreateImage: the provisioned container becomes the image of every AMI (all regions)."""
        first = ami_image(ami_ids[0])
        res = _docker("commit", instance.container, first, log=self.log)
        if not res.ok:
            raise BuildFailed("docker commit of the rehearsal instance failed", log_tail=res.tail)
        for other in ami_ids[1:]:
            _docker("tag", first, ami_image(other))

    def forget(self, ami_ids: list[str]) -> None:
        """Drop the images of deregistered rehearsal AMIs from the Docker engine (gc)."""
        tags = [ami_image(i) for i in ami_ids if image_exists(ami_image(i))]
        if tags:
            _docker("rmi", *tags, log=self.log)

    def terminate(self, instance: Instance) -> None:
        """Remove the container (the instance is always terminated)."""
        # also after a cancel: the stand-in instance goes with the build that booted it
        _docker("rm", "-f", "-v", instance.container, log=self.log, cleanup=True)


@contextlib.contextmanager
def rehearsal(state_dir: Path, region: str, log: Path, copies: tuple[str, ...] = ()) -> Iterator[RehearsalEc2]:
    """Start moto for a rehearsal and always stop it (saving the AMIs it holds in the region and its copies)."""
    r = RehearsalEc2(state_dir, region, log, copies)
    try:
        r.start()
        yield r
    finally:
        with contextlib.suppress(ImagekitError):
            r.stop()
