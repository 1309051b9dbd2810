"""Packer HCL2 templates for layered AMIs, built with python-hcl2's Builder and made `packer fmt` clean. Pure."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import hcl2

from imagekit.plan import plan_image
from imagekit.render.service_unit import render_service_install
from imagekit.spec import Layer, LoadedSpec

# Where a layer's spec files (copy sources, requirements, local weights) are staged on the instance; the
# provisioning script finds them through $IMAGEKIT_SRC, as the Dockerfile finds them in its build context.
STAGE_DIR = "/tmp/imagekit/src"  # noqa: S108 - a path on the build instance, not here
BUILD_DIR = "/tmp/imagekit/build"  # noqa: S108 - a path on the build instance
VERIFY_DIR = "/tmp/imagekit-verify"  # noqa: S108 - a path on the verify instance
MANIFEST_FILE = "packer-manifest.json"
# Packer 1.6.6 cannot skip the AMI of a verification run; this exit stops the run before it (see render_verify)
STOP_EXIT = 86
VERIFY_STOP = "imagekit: verification done; stopping the run so that no AMI is made"
AMAZON_PLUGIN = {"version": ">= 1.3.0", "source": "github.com/hashicorp/amazon"}
# Scripts run as root, like the Dockerfile's RUN steps; the environment carries the staging folder. The script is
# sourced under an ERR trap (inherited by functions, -E) so a failure names its line in the script; the shift
# leaves the script its own (empty) arguments, as when it is run directly.
EXECUTE_COMMAND = (
    "chmod +x '{{ .Path }}' && sudo -n env {{ .Vars }} bash -c "
    '\'set -E; trap "echo imagekit: failed at line \\$LINENO of the provisioning script >&2" ERR; '
    '__imagekit_script=$1; shift; . "$__imagekit_script"\' '
    "imagekit '{{ .Path }}'"
)
ROOT_DEVICE = "/dev/sda1"
# The leaf's service unit step is a plain root shell script (the unit's text in a quoted here-document).
SERVICE_EXECUTE_COMMAND = "chmod +x '{{ .Path }}' && sudo -n sh '{{ .Path }}'"


@dataclass(frozen=True)
class RehearsalRender:
    """Point a render at the local rehearsal (moto server + sshd containers) instead of AWS.

    The endpoint, host and port are variables (ec2_endpoint, ssh_host, ssh_port) so the text stays pure.
    """

    ssh_username: str = "root"


def _s(text: str) -> str:
    """An HCL string literal whose content is taken as is (no interpolation)."""
    literal = json.dumps(text.replace("${", "$${").replace("%{", "%%{"), ensure_ascii=False)
    # python-hcl2's writer drops the quote of an escaped `"` before `$${`/`%%{` (`\"$${` came out as `\$${`, which
    # Packer refuses); the same quote as a \u escape passes through it unchanged
    return literal.replace('\\"$${', "\\u0022$${").replace('\\"%%{', "\\u0022%%{")


def _t(template: str) -> str:
    """An HCL string template: `${...}` in it is interpolated by Packer."""
    return json.dumps(template, ensure_ascii=False)


def _expr(expression: str) -> str:
    """A bare HCL expression such as `var.parent_ami`."""
    return "${" + expression + "}"


def _map(values: Mapping[str, str], *, template: bool = False) -> dict[str, str]:
    conv = _t if template else _s
    return {_s(k): conv(v) for k, v in sorted(values.items())}


_ATTR = re.compile(r'^(?P<indent>\s*)(?P<key>"(?:[^"\\]|\\.)*"|[A-Za-z_][\w-]*)\s*=\s*(?P<value>.*)$')


def fmt(text: str) -> str:
    """Normalise hcl2.dumps output the way `packer fmt` does: aligned `=` in runs of one-line attributes."""
    lines = [line.rstrip() for line in text.splitlines()]
    out: list[str] = []
    for line in lines:
        # one blank line at most, none right after an opening brace or before a closing one
        if not line and (not out or not out[-1] or out[-1].endswith("{")):
            continue
        if line.strip() == "}" and out and not out[-1]:
            out.pop()
        out.append(line)
    while out and not out[-1]:
        out.pop()
    aligned: list[str] = []
    group: list[tuple[str, str, str]] = []

    def flush() -> None:
        width = max((len(k) for _, k, _ in group), default=0)
        aligned.extend(f"{ind}{k.ljust(width)} = {v}" for ind, k, v in group)
        group.clear()

    for line in out:
        m = _ATTR.match(line)
        single = m is not None and not m["value"].endswith(("[", "{", "("))
        if m is not None and single and (not group or group[0][0] == m["indent"]):
            group.append((m["indent"], m["key"], m["value"]))
            continue
        flush()
        if m is not None and single:
            group.append((m["indent"], m["key"], m["value"]))
            continue
        aligned.append(f"{m['indent']}{m['key']} = {m['value']}" if m is not None else line)
    flush()
    return "\n".join(aligned) + "\n"


def _dumps(builder: hcl2.Builder) -> str:
    text = hcl2.dumps(
        builder.build(),  # type: ignore[no-untyped-call]
        deserializer_options=hcl2.DeserializerOptions(object_elements_trailing_comma=False),
        formatter_options=hcl2.FormatterOptions(
            vertically_align_attributes=False, vertically_align_object_elements=False
        ),
    )
    return fmt(text)


def _variable(doc: hcl2.Builder, name: str, description: str, *, default: str | None = None) -> None:
    attrs: dict[str, Any] = {"type": _expr("string"), "description": _s(description)}
    if default is not None:
        attrs["default"] = _s(default)
    doc.block("variable", [_s(name)], **attrs)


def _packer_block(doc: hcl2.Builder) -> None:
    packer = doc.block("packer")
    packer.block("required_plugins", amazon=_map(AMAZON_PLUGIN))


def _pins(loaded: LoadedSpec, image: str) -> dict[str, str]:
    res = loaded.resolved(image)
    pins = {"cuda": res.cuda, "cudnn": res.cudnn, "driver": res.driver, "python": res.python, "torch": res.torch}
    return {f"imagekit:pin:{k}": v for k, v in pins.items() if v}


def layer_tags(loaded: LoadedSpec, image: str, layer: str, layer_hash: str, parent_hash: str | None) -> dict[str, str]:
    """The AMI and snapshot tags of a layer: who made it, its hash chain, its pins, and the spec's own tags."""
    tags = dict(loaded.spec.aws.tags)
    tags.update(
        {
            "Name": f"imagekit {loaded.spec.name}/{layer}",
            "imagekit:spec": loaded.spec.name,
            "imagekit:image": image,
            "imagekit:layer": layer,
            "imagekit:layer-hash": layer_hash,
            "imagekit:parent-hash": parent_hash or "",
        }
    )
    tags.update(_pins(loaded, image))
    return tags


def _source(
    doc: hcl2.Builder,
    loaded: LoadedSpec,
    name: str,
    *,
    ami_name: str,
    instance_type: str,
    root: Layer | None,
    rehearsal: RehearsalRender | None,
    create_ami: bool,
    tags: dict[str, str] | None,
    modern: bool = False,
) -> None:
    aws = loaded.spec.aws
    attrs: dict[str, Any] = {
        "region": _s(aws.region),
        "instance_type": _s(instance_type),
        "ami_name": _t(ami_name),
        "ssh_username": _s(rehearsal.ssh_username if rehearsal else aws.ssh_username),
    }
    if not create_ami and modern:
        attrs["skip_create_ami"] = True
    if root is None:
        attrs["source_ami"] = _expr("var.parent_ami" if create_ami else "var.ami_id")
    if create_ami:
        if aws.ami_regions:
            attrs["ami_regions"] = [_s(r) for r in aws.ami_regions]
        if aws.encrypted or aws.kms_key_id:
            attrs["encrypt_boot"] = True
            if aws.kms_key_id:
                attrs["kms_key_id"] = _s(aws.kms_key_id)
    if tags is not None:
        # A child records the AMI it was built from, so gc never removes a parent a kept child needs.
        parent = {"imagekit:parent-ami": "${var.parent_ami}"} if root is None else {}
        attrs["tags"] = {**_map(tags), **_map(parent, template=True)}
        attrs["tags"] = dict(sorted(attrs["tags"].items()))
        attrs["snapshot_tags"] = attrs["tags"]
    run_tags = {"Name": f"imagekit-build {loaded.spec.name}/{name}", "imagekit:build": "true"}
    attrs["run_tags"] = _map(run_tags)
    # Packer 1.6.6 ignores AWS_ENDPOINT_URL; the runner passes it here ("" = AWS's own endpoint)
    attrs["custom_endpoint_ec2"] = _expr("var.ec2_endpoint")
    if rehearsal is None:
        attrs["ssh_interface"] = _s(aws.ssh_interface)
        if aws.subnet_id:
            attrs["subnet_id"] = _s(aws.subnet_id)
        if aws.security_group_id:
            attrs["security_group_id"] = _s(aws.security_group_id)
    else:
        # moto answers the EC2 API; an sshd container answers SSH. No real endpoint or credential is touched.
        attrs.update(
            {
                "skip_credential_validation": True,
                "skip_metadata_api_check": True,
                "skip_region_validation": True,
                "ssh_host": _expr("var.ssh_host"),
                "ssh_port": _expr("var.ssh_port"),
                "ssh_timeout": _s("2m"),
            }
        )
    src = doc.block("source", [_s("amazon-ebs"), _s(name)], **attrs)
    if root is not None and root.from_ is not None and root.from_.ami is not None:
        ami = root.from_.ami
        src.block(
            "source_ami_filter",
            filters=_map({"name": ami.name, "architecture": ami.architecture, "virtualization-type": "hvm"}),
            owners=[_s(o) for o in ami.owners],
            most_recent=True,
        )
    src.block(
        "launch_block_device_mappings",
        device_name=_s(ROOT_DEVICE),
        volume_size=aws.volume_size,
        volume_type=_s("gp3"),
        # gp3's baseline, spelled out: Packer 1.6.6 rejects gp3 without a throughput
        throughput=125,
        iops=3000,
        delete_on_termination=True,
    )


def _upload_paths(layer: Layer) -> list[str]:
    """The spec-relative files a layer brings, uploaded to the staging folder before its script runs."""
    paths = [item.src for item in layer.copy_]
    paths += [m.src for m in layer.models if not m.is_remote]
    if layer.requirements:
        paths.append(layer.requirements)
    return sorted(dict.fromkeys(paths))


def _staging_dirs(paths: list[str]) -> list[str]:
    dirs = set()
    for rel in paths:
        clean = rel.rstrip("/")
        dirs.add(f"{STAGE_DIR}/{clean}" if rel.endswith("/") else f"{STAGE_DIR}/{clean.rpartition('/')[0]}".rstrip("/"))
    return sorted(dirs)


def render_layer(
    loaded: LoadedSpec,
    image: str,
    layer: str,
    *,
    layer_hash: str,
    parent_hash: str | None,
    rehearsal: RehearsalRender | None = None,
    required_plugins: bool = False,
) -> str:
    """The template that builds one layer's AMI from its parent's (or, for the root, from the AMI filter).

    The image's leaf also installs and enables the image's systemd unit (service_unit.render_service_install) after its
    own script: an image-level step, like the Dockerfile's final stage, so each layer keeps one provisioning script.
    """
    spec_layer = loaded.spec.layers[layer]
    is_root = spec_layer.parent is None
    doc = hcl2.Builder()
    if required_plugins:
        _packer_block(doc)
    # Every layer template takes the same variables, so the runner passes one set (Packer rejects unknown ones).
    _variable(
        doc,
        "parent_ami",
        "AMI id this layer starts from (the parent layer's AMI)",
        default="" if is_root and rehearsal is None else None,
    )
    _variable(doc, "build_id", "unique suffix of the AMI name (AMI names must be unique)")
    _variable(doc, "script_dir", "folder holding the provisioning scripts (<layer>.sh)")
    _variable(doc, "src_dir", "the spec's folder (copy sources, requirements, local weights)", default=".")
    _variable(doc, "build_dir", "build-time extras uploaded for pip only (wheelhouse, CA bundle); may be empty")
    doc.block(
        "variable",
        [_s("build_env")],
        type=_expr("list(string)"),
        default=[],
        description=_s("extra environment for the provisioning script (PIP_FIND_LINKS=..., PIP_CERT=...)"),
    )
    paths = _upload_paths(spec_layer)
    _endpoint_variables(doc, rehearsal)
    tags = layer_tags(loaded, image, layer, layer_hash, parent_hash)
    # In a rehearsal the root starts from a stand-in AMI registered in moto for the bootstrap base.
    root = spec_layer if is_root and rehearsal is None else None
    _source(
        doc,
        loaded,
        layer,
        ami_name=f"imagekit-{loaded.spec.name}-{layer}-{layer_hash[:16]}-${{var.build_id}}",
        instance_type=loaded.spec.aws.instance_type,
        root=root,
        rehearsal=rehearsal,
        create_ami=True,
        tags=tags,
    )
    build = doc.block("build", name=_s(layer), sources=[_s(f"source.amazon-ebs.{layer}")])
    pip_work = bool(spec_layer.torch or spec_layer.requirements or spec_layer.pip)
    staging = _staging_dirs(paths) + ([BUILD_DIR] if pip_work else [])
    if staging:
        build.block("provisioner", [_s("shell")], inline=[_s("mkdir -p " + " ".join(staging))])
    if pip_work:
        # a wheelhouse or CA bundle for pip, for this build only ($PIP_FIND_LINKS / $PIP_CERT via build_env)
        build.block("provisioner", [_s("file")], source=_t("${var.build_dir}/"), destination=_s(f"{BUILD_DIR}/"))
    if paths:
        for rel in paths:
            dest = f"{STAGE_DIR}/{rel}"
            build.block(
                "provisioner",
                [_s("file")],
                source=_t("${var.src_dir}/" + rel),
                destination=_s(dest.rstrip("/") + ("/" if rel.endswith("/") else "")),
            )
    build.block(
        "provisioner",
        [_s("shell")],
        script=_t(f"${{var.script_dir}}/{layer}.sh"),
        execute_command=_s(EXECUTE_COMMAND),
        environment_vars=_expr(f'concat(["IMAGEKIT_SRC={STAGE_DIR}", "IMAGEKIT_TARGET=ami"], var.build_env)')
        if pip_work
        else [_s(f"IMAGEKIT_SRC={STAGE_DIR}"), _s("IMAGEKIT_TARGET=ami")],
    )
    service = render_service_install(loaded, image) if layer == loaded.spec.images[image].leaf else None
    if service is not None:
        build.block(
            "provisioner",
            [_s("shell")],
            inline=[_s(line) for line in service.rstrip("\n").split("\n")],
            execute_command=_s(SERVICE_EXECUTE_COMMAND),
        )
    if staging:
        build.block("provisioner", [_s("shell")], inline=[_s("sudo -n rm -rf /tmp/imagekit")])
    build.block(
        "post-processor",
        [_s("manifest")],
        output=_s(MANIFEST_FILE),
        strip_path=True,
        custom_data=_map({"layer": layer, "layer_hash": layer_hash}),
    )
    return _dumps(doc)


def render_packer(
    loaded: LoadedSpec,
    image: str,
    *,
    rehearsal: RehearsalRender | None = None,
    required_plugins: bool = False,
    hashes: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`<layer>.pkr.hcl` -> HCL2 text for every layer of an image's chain, root first.

    `required_plugins` adds the `packer { required_plugins }` block current Packer needs; Packer 1.6.6 has the
    amazon builder built in and rejects that block, so the committed renders leave it out.
    """
    if hashes is None:
        hashes = {lp.name: lp.hash for lp in plan_image(loaded, image, "ami").layers}
    out: dict[str, str] = {}
    for name, layer in loaded.chain(image):
        out[f"{name}.pkr.hcl"] = render_layer(
            loaded,
            image,
            name,
            layer_hash=hashes[name],
            parent_hash=hashes[layer.parent] if layer.parent else None,
            rehearsal=rehearsal,
            required_plugins=required_plugins,
        )
    return out


def render_verify(
    loaded: LoadedSpec,
    image: str,
    *,
    rehearsal: RehearsalRender | None = None,
    required_plugins: bool = False,
) -> str:
    """The boot-and-verify template: boot the leaf AMI on the verify instance type, run the checks, fetch the report.

    With current Packer no AMI is created (skip_create_ami). Packer 1.6.6 lacks that option: its last provisioner
    stops the build on purpose (exit STOP_EXIT) once the report is downloaded, so no AMI (a snapshot of the whole
    volume, minutes and money) is made; the runner reads that exit as success. Packer terminates the instance.
    """
    doc = hcl2.Builder()
    if required_plugins:
        _packer_block(doc)
    _variable(doc, "ami_id", "the AMI to boot and verify")
    _variable(
        doc,
        "parent_ami",
        "unused by verification; kept so every imagekit template takes the same variables",
        default="",
    )
    _variable(doc, "build_id", "unique suffix for names")
    _variable(doc, "verify_dir", "folder holding vmcheck.py, probe.py and check.json")
    _variable(doc, "report_path", "where the downloaded JSON report is written")
    _endpoint_variables(doc, rehearsal)
    verify = loaded.verify_for(image)
    _source(
        doc,
        loaded,
        "verify",
        ami_name=f"imagekit-verify-{loaded.spec.name}-${{var.build_id}}",
        instance_type=verify.instance_type or loaded.spec.aws.instance_type,
        root=None,
        rehearsal=rehearsal,
        create_ami=False,
        tags=None,
        modern=required_plugins,
    )
    build = doc.block("build", name=_s("verify"), sources=[_s("source.amazon-ebs.verify")])
    build.block("provisioner", [_s("shell")], inline=[_s(f"mkdir -p {VERIFY_DIR}")])
    # verify_dir holds vmcheck.py (stdlib), probe.py and check.json (what to start, probe and request)
    build.block("provisioner", [_s("file")], source=_t("${var.verify_dir}/"), destination=_s(f"{VERIFY_DIR}/"))
    build.block(
        "provisioner",
        [_s("shell")],
        inline=[_s(f"sudo -n python3 {VERIFY_DIR}/vmcheck.py {VERIFY_DIR}")],
        # The checks' verdict is in the report; a failing check must still let the report come back.
        valid_exit_codes=[0, 1],
    )
    build.block(
        "provisioner",
        [_s("file")],
        direction=_s("download"),
        source=_s(f"{VERIFY_DIR}/report.json"),
        destination=_expr("var.report_path"),
    )
    if not required_plugins:
        build.block(
            "provisioner",
            [_s("shell")],
            inline=[_s(f"echo '{VERIFY_STOP}'"), _s(f"exit {STOP_EXIT}")],
        )
    return _dumps(doc)


def _endpoint_variables(doc: hcl2.Builder, rehearsal: RehearsalRender | None) -> None:
    """Where EC2 and SSH are: the same variables in every layer and verify template."""
    _variable(
        doc,
        "ec2_endpoint",
        "EC2 endpoint: AWS_ENDPOINT_URL(_EC2) when set, the rehearsal's moto server, or empty for AWS",
        default="" if rehearsal is None else None,
    )
    if rehearsal is not None:
        _variable(doc, "ssh_host", "the rehearsal container's SSH address")
        _variable(doc, "ssh_port", "the rehearsal container's SSH port")
