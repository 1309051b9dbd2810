#!/usr/bin/env bash
# Set up a fresh Debian (bookworm) machine, as root, for imagekit and its tests:
# apt packages (Docker Engine, Packer, debootstrap, a local registry, buildah/podman/skopeo, pigz, zstd), a running
# dockerd, and the venv in .venv.
# Safe to run again: every step checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pair in dockerd:docker.io packer:packer debootstrap:debootstrap docker-registry:docker-registry \
            curl:curl git:git buildah:buildah skopeo:skopeo podman:podman unpigz:pigz zstd:zstd; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/usr/bin/$cmd" ] || need_apt+=("$pkg")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  apt-get update -q
  # with recommends: the same set (apparmor, cgroupfs-mount, ...) that dockerd was checked with here
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" ca-certificates
fi

# Debian's client at /usr/bin/docker drives BuildKit; the newer client some images put first on PATH has no buildx.
if ! /usr/bin/docker info >/dev/null 2>&1; then
  echo "setup: starting dockerd" >&2
  mkdir -p /var/log
  (setsid dockerd >/var/log/imagekit-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do /usr/bin/docker info >/dev/null 2>&1 && break; sleep 1; done
  /usr/bin/docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start; see /var/log/imagekit-dockerd.log" >&2; exit 1; }
fi

# buildah and podman pick a network backend per store: netavark for an empty one, CNI for one that holds images
# before it first needs a network (a test's fresh store does). Both default bridges are 10.88.0.1/16, and once
# cni-podman0 exists beside netavark's podman0 every RUN step there loses its network ("Temporary failure
# resolving"): pin netavark, and remove a CNI bridge left behind when no CNI container holds an address on it.
if command -v buildah >/dev/null 2>&1 && ! grep -qsE '^[[:space:]]*network_backend' \
     /etc/containers/containers.conf /etc/containers/containers.conf.d/*.conf; then
  mkdir -p /etc/containers/containers.conf.d
  printf '# scripts/setup-host.sh (imagekit): one network backend for every store\n[network]\nnetwork_backend = "netavark"\n' \
    > /etc/containers/containers.conf.d/50-imagekit-netavark.conf
fi
# (only where netavark is the backend: a host that chose CNI itself keeps its bridge)
if ip link show cni-podman0 >/dev/null 2>&1 \
   && grep -qsE '^[[:space:]]*network_backend[[:space:]]*=[[:space:]]*"netavark"' \
        /etc/containers/containers.conf /etc/containers/containers.conf.d/*.conf \
   && ! ls /var/lib/cni/networks/podman/ 2>/dev/null | grep -qE '^[0-9]+\.'; then
  echo "setup: removing cni-podman0, a CNI bridge on netavark's subnet" >&2
  ip link delete cni-podman0
fi

if [ ! -x .venv/bin/imagekit ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch .venv/.installed
fi
# outside verifiers the tests run (@sigstore/verify): node 20 from the machine, packages pinned by the lock file
if ! command -v node >/dev/null 2>&1; then
  echo "setup: installing nodejs npm" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
fi
if [ ! -d tests/js/node_modules/@sigstore/verify ] || [ tests/js/package-lock.json -nt tests/js/node_modules ]; then
  echo "setup: npm ci in tests/js" >&2
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "setup: ready (docker $(/usr/bin/docker version --format '{{.Server.Version}}'), $(packer version | head -1))" >&2
