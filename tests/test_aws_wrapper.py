"""imagekit's boto3 wrapper against a moto server: what a from.ami filter resolves to."""

from __future__ import annotations

import uuid

import boto3
import pytest

from imagekit.runners.aws import Aws

pytestmark = pytest.mark.aws


def test_newest_ami_follows_the_filter(moto_server: str) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    reservation = ec2.run_instances(ImageId="ami-785db401", MinCount=1, MaxCount=1)
    instance = reservation["Instances"][0]["InstanceId"]
    prefix = f"imagekit-src-{uuid.uuid4().hex[:8]}"
    made = ec2.create_image(InstanceId=instance, Name=f"{prefix}-2026.11.01")["ImageId"]
    owner = ec2.describe_images(ImageIds=[made])["Images"][0]["OwnerId"]
    aws = Aws()
    assert aws.newest_ami("us-east-1", f"{prefix}-*", [owner], "x86_64") == made
    assert aws.newest_ami("us-east-1", f"{prefix}-nothing-*", [owner], "x86_64") is None
    # another owner's images are not selected, however the name matches
    assert aws.newest_ami("us-east-1", f"{prefix}-*", ["000000000000"], "x86_64") is None
