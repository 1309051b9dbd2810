"""`imagekit manifest verify --image REF --policy FILE`: the admission question, answered from the signed store."""

from __future__ import annotations

from pathlib import Path

from imagekit.manifest.ledger import open_ledger
from imagekit.manifest.policy import PolicyOutcome, evaluate, load_policy
from imagekit.spec import load_spec


def verify_policy(path: Path | str | None, image: str, policy_file: Path, trust: Path | None = None) -> PolicyOutcome:
    """Every clause of the policy for the image the registry serves for `image` (REGISTRY/REPO:TAG or @sha256:)."""
    from imagekit.runners.registry import Registry, split_reference

    loaded = load_spec(path)
    policy = load_policy(policy_file)
    if trust is None and policy.trust:
        trust = policy_file.parent / policy.trust
    ledger = open_ledger(loaded, trust)
    host, repo, ref = split_reference(image)
    served = Registry(host).manifest_digest(repo, ref or "latest")
    digest = ref if ref.startswith("sha256:") else (served or "")
    answer = f"{image} is {served}" if served and served == digest else ""
    return evaluate(ledger, image, digest, policy, answer)
