"""AWS partitions (aws, aws-cn, aws-us-gov): pure lookups for the AMI settings that differ between them.

A region belongs to one partition; ARNs name it (`arn:aws-cn:kms:...`); AMIs copy only within it; and the big
publishers have a different owner id in each (Canonical is 099720109477 in aws, 837727238323 in aws-cn).
"""

from __future__ import annotations

import re

REGION_RE = re.compile(r"^(?:[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d+)$")
# publisher -> partition -> owner id, only ids checked against the publishers' own pages: Ubuntu's "Find Ubuntu
# images on AWS" (Canonical in aws and aws-cn), Debian's cloud-team AMI list, Amazon's "Find a Linux AMI".
OWNERS: dict[str, dict[str, str]] = {
    "Canonical (Ubuntu)": {"aws": "099720109477", "aws-cn": "837727238323"},
    "Amazon": {"aws": "137112412989"},
    "Debian": {"aws": "136693071363"},
}


def partition(region: str) -> str:
    """The partition of a region: cn-north-1 -> aws-cn, us-gov-west-1 -> aws-us-gov, else aws."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def arn_partition(arn: str) -> str | None:
    """The partition an ARN names (`arn:aws-cn:...` -> aws-cn); None for something that is not an ARN."""
    m = re.match(r"^arn:(aws(?:-cn|-us-gov)?):", arn)
    return m[1] if m else None


def owner_problem(owner: str, region: str) -> str:
    """Why an AMI owner id cannot be right in this region's partition (empty when it can, or is unknown)."""
    want = partition(region)
    for publisher, ids in OWNERS.items():
        for part, owner_id in ids.items():
            if owner == owner_id and part != want:
                there = ids.get(want)
                fix = f"use {there}" if there else f"{publisher} publishes no AMIs in {want}"
                return f"{owner} is {publisher}'s owner id in the {part} partition, not {want} ({region}): {fix}"
    return ""
