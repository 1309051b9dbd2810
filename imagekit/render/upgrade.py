"""The distribution upgrade a root layer runs (security fixes): one command line for both targets. Pure."""

from __future__ import annotations

APT_UPGRADE = "apt-get upgrade -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
# A root layer's first docker step: the distribution's updates. A plain RUN (no script mount) so every build on
# the same base shares it from the BuildKit cache; a refresh (no cache) runs it again.
UPGRADE_RUN = (
    "RUN apt-get update -q \\\n"
    f"    && DEBIAN_FRONTEND=noninteractive {APT_UPGRADE} \\\n"
    "    && apt-get clean && rm -rf /var/lib/apt/lists/*"
)
