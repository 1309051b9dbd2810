"""The AMI target: layered AMIs with Packer, boot-and-verify, retention (gc), and the local rehearsal."""

from __future__ import annotations

from imagekit.ami.build import AmiBuildResult, build_ami

__all__ = ["AmiBuildResult", "build_ami"]
