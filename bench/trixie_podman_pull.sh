#!/bin/bash
# Pull the GPU example with a newer podman than bookworm's: trixie's podman 5.4.2 (built with Go 1.24.4), run in a
# trixie chroot on this machine, into an empty store, timed with bash's `time` (wall, user, sys CPU-seconds).
# Used once for issue 22 (README, "Cold start"); not part of bench/run.py. Prepare, as root:
#   debootstrap --variant=minbase --include=podman,crun,conmon,fuse-overlayfs,ca-certificates trixie \
#       /work/trixie/root http://deb.debian.org/debian
#   start a registry and push the image to it (bench/seed_bench.py's _start_registry, then
#   skopeo copy --dest-tls-verify=false --format oci --dest-compress-format zstd docker-daemon:tts-inference:latest \
#       docker://HOST/tts:zstd   and the same with gzip to HOST/tts:gzip), and write HOST to /work/trixie/reg/host.
# usage: bench/trixie_podman_pull.sh zstd|gzip
# Starting the container fails in the chroot here (crun: "cgroups in hybrid mode not supported"), so only the pull
# is measured; podman 4.3's start and /ready take about 2 s (bench/cold_start.py).
set -u
R=/work/trixie/root; HOST=$(cat /work/trixie/reg/host); TAG=$1
mountpoint -q $R || mount --bind $R $R
mountpoint -q $R/proc || mount --bind /proc $R/proc
mountpoint -q $R/sys || mount --rbind /sys $R/sys
mountpoint -q $R/dev || mount --rbind /dev $R/dev
S=/store-$TAG; rm -rf $R$S; mkdir -p $R$S
export PODMAN_IGNORE_CGROUPSV1_WARNING=1
P="podman --root $S/root --runroot $S/run --storage-driver overlay --cgroup-manager cgroupfs --events-backend file"
sync
TIMEFORMAT='wall %R user %U sys %S'
echo "== pull $TAG"; time chroot $R $P pull -q --tls-verify=false $HOST/tts:$TAG
chroot $R $P rmi -a -f >/dev/null 2>&1
umount -R $R$S/root/overlay 2>/dev/null; rm -rf $R$S
umount -R $R/proc $R/sys $R/dev 2>/dev/null; umount $R 2>/dev/null
