"""The one boto3/botocore wrapper: one session hands out the EC2, S3, KMS and STS clients; the EC2 calls imagekit
makes (find AMIs by tag, deregister them with their snapshots, copy tags across regions).

Standard AWS configuration (profiles, region, credentials, AWS_ENDPOINT_URL) is honoured because boto3 reads it;
a rehearsal passes its moto endpoint and dummy credentials explicitly instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imagekit.errors import ImagekitError


class AwsError(ImagekitError):
    """An AWS call failed; names the call and region."""

    exit_code = 1


@dataclass(frozen=True)
class Ami:
    """One AMI in one region, with what gc and reuse need to know about it."""

    id: str
    region: str
    name: str
    created: str
    state: str
    tags: dict[str, str] = field(default_factory=dict)
    snapshots: tuple[str, ...] = ()

    @property
    def layer_hash(self) -> str:
        """The imagekit layer hash tag ("" when the AMI was not made by imagekit)."""
        return self.tags.get("imagekit:layer-hash", "")


@dataclass(frozen=True)
class Endpoint:
    """Where to talk to EC2: None fields fall back to boto3's standard configuration."""

    url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    profile: str | None = None


class AwsSession:
    """One boto3 session that hands out clients (EC2, S3, KMS, STS), each made once per service and region.

    Standard AWS configuration (profiles, region, credentials, AWS_ENDPOINT_URL) applies unless `endpoint` says
    otherwise; `session` is a boto3 Session (or a fake for unit tests).
    """

    def __init__(self, endpoint: Endpoint | None = None, session: Any = None) -> None:
        self.endpoint = endpoint or Endpoint()
        self._session = session
        self._clients: dict[tuple[str, str | None], Any] = {}

    @property
    def session(self) -> Any:
        """The boto3 Session, created on first use."""
        if self._session is None:
            import boto3

            self._session = boto3.Session(
                profile_name=self.endpoint.profile,
                aws_access_key_id=self.endpoint.access_key,
                aws_secret_access_key=self.endpoint.secret_key,
            )
        return self._session

    def client(self, service: str, region: str | None = None) -> Any:
        """The client for a service (in a region; None: the configured default)."""
        key = (service, region)
        if key not in self._clients:
            kwargs: dict[str, Any] = {}
            if region is not None:
                kwargs["region_name"] = region
            if self.endpoint.url:
                kwargs["endpoint_url"] = self.endpoint.url
            self._clients[key] = self.session.client(service, **kwargs)
        return self._clients[key]


def aws_errors() -> tuple[type[Exception], ...]:
    """Everything botocore raises for a failed call (an error answer, or no answer at all)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


def error_code(exc: BaseException) -> tuple[str, int | None]:
    """A ClientError's error code and HTTP status ("" and None for other errors)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")), response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def offline_session() -> Any:
    """A boto3 Session for reading the configuration only: off EC2 the metadata service is unreachable, so its
    probe is kept to one try of one second (doctor never hangs)."""
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    core.set_config_variable("metadata_service_timeout", 1)
    core.set_config_variable("metadata_service_num_attempts", 1)
    return boto3.Session(botocore_session=core)


def s3_client() -> Any:
    """An S3 client from the standard configuration (honours AWS_ENDPOINT_URL)."""
    return AwsSession().client("s3")


def kms_client() -> Any:
    """A KMS client from the standard configuration (honours AWS_ENDPOINT_URL)."""
    return AwsSession().client("kms")


class Aws:
    """EC2 calls imagekit makes, per region. Pass `session` (a boto3 Session) to use a fake in unit tests."""

    def __init__(self, endpoint: Endpoint | None = None, session: Any = None) -> None:
        self.aws = AwsSession(endpoint, session)
        self.endpoint = self.aws.endpoint

    def _call(self, region: str, op: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.aws.client("ec2", region), op)(**kwargs)
        except aws_errors() as exc:
            raise AwsError(f"EC2 {op} in {region} failed: {exc}") from None

    def describe_images(
        self, region: str, *, tags: Mapping[str, str] | None = None, ids: Iterable[str] = ()
    ) -> list[Ami]:
        """Own AMIs in a region matching all the given tags (or these ids), newest first."""
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in sorted((tags or {}).items())]
        kwargs: dict[str, Any] = {"Owners": ["self"]}
        if filters:
            kwargs["Filters"] = filters
        id_list = list(ids)
        if id_list:
            kwargs = {"ImageIds": id_list}
        resp = self._call(region, "describe_images", **kwargs)
        amis = [_ami(img, region) for img in resp.get("Images", [])]
        return sorted(amis, key=lambda a: (a.created, a.id), reverse=True)

    def newest_ami(self, region: str, name: str, owners: Iterable[str], architecture: str) -> str | None:
        """The id of the newest available AMI a name filter selects among `owners` (what from.ami resolves to)."""
        resp = self._call(
            region,
            "describe_images",
            Owners=list(owners),
            Filters=[
                {"Name": "name", "Values": [name]},
                {"Name": "architecture", "Values": [architecture]},
                {"Name": "state", "Values": ["available"]},
            ],
        )
        images = sorted(resp.get("Images", []), key=lambda i: (str(i.get("CreationDate", "")), str(i["ImageId"])))
        return str(images[-1]["ImageId"]) if images else None

    def find_layer(self, region: str, spec: str, layer: str, layer_hash: str) -> Ami | None:
        """The newest available AMI already built for this layer hash, for reuse instead of a rebuild."""
        tags = {"imagekit:spec": spec, "imagekit:layer": layer, "imagekit:layer-hash": layer_hash}
        for ami in self.describe_images(region, tags=tags):
            if ami.state == "available":
                return ami
        return None

    def deregister(self, ami: Ami) -> list[str]:
        """Deregister an AMI and delete its snapshots; returns the snapshot ids deleted."""
        self._call(ami.region, "deregister_image", ImageId=ami.id)
        deleted = []
        for snap in ami.snapshots:
            self._call(ami.region, "delete_snapshot", SnapshotId=snap)
            deleted.append(snap)
        return deleted

    def copy_tags(self, source: Ami, targets: Iterable[Ami]) -> None:
        """Put the source AMI's tags on its region copies (copy_image does not carry tags)."""
        tags = [{"Key": k, "Value": v} for k, v in sorted(source.tags.items()) if not k.startswith("aws:")]
        if not tags:
            return
        for target in targets:
            resources = [target.id, *target.snapshots]
            self._call(target.region, "create_tags", Resources=resources, Tags=tags)

    def create_tags(self, region: str, resources: list[str], tags: Mapping[str, str]) -> None:
        """Tag resources in a region."""
        pairs = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
        self._call(region, "create_tags", Resources=resources, Tags=pairs)

    def register_image(self, region: str, name: str, tags: Mapping[str, str]) -> str:
        """Register an EBS-backed image record (the rehearsal's stand-in for a distribution's public AMI)."""
        resp = self._call(
            region,
            "register_image",
            Name=name,
            Architecture="x86_64",
            RootDeviceName="/dev/sda1",
            VirtualizationType="hvm",
            BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}}],
        )
        ami_id = str(resp["ImageId"])
        if tags:
            self.create_tags(region, [ami_id], tags)
        return ami_id

    def account(self) -> str:
        """The account the credentials belong to ("" when STS cannot say: the record's account is informative)."""
        try:
            return str(self.aws.client("sts").get_caller_identity()["Account"])
        except Exception:
            return ""

    def image_bytes(self, region: str, ami_id: str) -> int | None:
        """An AMI's size: its snapshots' full size when EC2 reports it, else their volume size (None when gone)."""
        found = self.describe_images(region, ids=[ami_id])
        if not found:
            return None
        if not found[0].snapshots:
            return 0
        resp = self._call(region, "describe_snapshots", SnapshotIds=list(found[0].snapshots))
        total = 0
        for snap in resp.get("Snapshots", []):
            full = snap.get("FullSnapshotSizeInBytes")
            total += int(full) if full else int(snap.get("VolumeSize", 0)) * 2**30
        return total

    def leftovers(self, region: str) -> dict[str, list[str]]:
        """Running/pending instances, packer's temporary security groups and key pairs (a cancel must leave none)."""
        res = self._call(region, "describe_instances")
        instances = [
            i["InstanceId"]
            for r in res.get("Reservations", [])
            for i in r.get("Instances", [])
            if i.get("State", {}).get("Name") not in ("terminated", "shutting-down")
        ]
        groups = [
            g["GroupId"]
            for g in self._call(region, "describe_security_groups").get("SecurityGroups", [])
            if g.get("GroupName", "").startswith("packer")
        ]
        keys = [
            k["KeyName"]
            for k in self._call(region, "describe_key_pairs").get("KeyPairs", [])
            if k.get("KeyName", "").startswith("packer")
        ]
        return {"instances": instances, "security_groups": groups, "key_pairs": keys}


def _ami(img: Mapping[str, Any], region: str) -> Ami:
    snaps = tuple(
        str(m["Ebs"]["SnapshotId"])
        for m in img.get("BlockDeviceMappings", [])
        if isinstance(m.get("Ebs"), dict) and m["Ebs"].get("SnapshotId")
    )
    return Ami(
        id=str(img["ImageId"]),
        region=region,
        name=str(img.get("Name", "")),
        created=str(img.get("CreationDate", "")),
        state=str(img.get("State", "")),
        tags={str(t["Key"]): str(t["Value"]) for t in img.get("Tags", []) or []},
        snapshots=snaps,
    )
