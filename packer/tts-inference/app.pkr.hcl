variable "parent_ami" {
  type        = string
  description = "AMI id this layer starts from (the parent layer's AMI)"
}

variable "build_id" {
  type        = string
  description = "unique suffix of the AMI name (AMI names must be unique)"
}

variable "script_dir" {
  type        = string
  description = "folder holding the provisioning scripts (<layer>.sh)"
}

variable "src_dir" {
  type        = string
  description = "the spec's folder (copy sources, requirements, local weights)"
  default     = "."
}

variable "build_dir" {
  type        = string
  description = "build-time extras uploaded for pip only (wheelhouse, CA bundle); may be empty"
}

variable "build_env" {
  type        = list(string)
  default     = []
  description = "extra environment for the provisioning script (PIP_FIND_LINKS=..., PIP_CERT=...)"
}

variable "ec2_endpoint" {
  type        = string
  description = "EC2 endpoint: AWS_ENDPOINT_URL(_EC2) when set, the rehearsal's moto server, or empty for AWS"
  default     = ""
}

source "amazon-ebs" "app" {
  region        = "us-east-1"
  instance_type = "g5.xlarge"
  ami_name      = "imagekit-tts-app-1b8531f956b47fbd-${var.build_id}"
  ssh_username  = "ubuntu"
  source_ami    = var.parent_ami
  tags = {
    "Name"                 = "imagekit tts/app"
    "imagekit:image"       = "tts-inference"
    "imagekit:layer"       = "app"
    "imagekit:layer-hash"  = "1b8531f956b47fbd0280c64a1cb9fcaf7c0b76d036ed2f3c73d8788a9cffbbab"
    "imagekit:parent-ami"  = "${var.parent_ami}"
    "imagekit:parent-hash" = "c05a004b9150e9df26c271213e3f179b847176a6c7f859a4fece4c71373389a7"
    "imagekit:pin:cuda"    = "13.0"
    "imagekit:pin:cudnn"   = "9"
    "imagekit:pin:driver"  = "580"
    "imagekit:pin:python"  = "3.11"
    "imagekit:pin:torch"   = "2.14.1"
    "imagekit:spec"        = "tts"
    "team"                 = "speech"
  }
  snapshot_tags = {
    "Name"                 = "imagekit tts/app"
    "imagekit:image"       = "tts-inference"
    "imagekit:layer"       = "app"
    "imagekit:layer-hash"  = "1b8531f956b47fbd0280c64a1cb9fcaf7c0b76d036ed2f3c73d8788a9cffbbab"
    "imagekit:parent-ami"  = "${var.parent_ami}"
    "imagekit:parent-hash" = "c05a004b9150e9df26c271213e3f179b847176a6c7f859a4fece4c71373389a7"
    "imagekit:pin:cuda"    = "13.0"
    "imagekit:pin:cudnn"   = "9"
    "imagekit:pin:driver"  = "580"
    "imagekit:pin:python"  = "3.11"
    "imagekit:pin:torch"   = "2.14.1"
    "imagekit:spec"        = "tts"
    "team"                 = "speech"
  }
  run_tags = {
    "Name"           = "imagekit-build tts/app"
    "imagekit:build" = "true"
  }
  custom_endpoint_ec2 = var.ec2_endpoint
  ssh_interface       = "public_ip"

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = 100
    volume_type           = "gp3"
    throughput            = 125
    iops                  = 3000
    delete_on_termination = true
  }
}

build {
  name = "app"
  sources = [
    "source.amazon-ebs.app",
  ]

  provisioner "shell" {
    inline = [
      "mkdir -p /tmp/imagekit/src/app /tmp/imagekit/src/models",
    ]
  }

  provisioner "file" {
    source      = "${var.src_dir}/app/"
    destination = "/tmp/imagekit/src/app/"
  }

  provisioner "file" {
    source      = "${var.src_dir}/models/tts.pt"
    destination = "/tmp/imagekit/src/models/tts.pt"
  }

  provisioner "shell" {
    script          = "${var.script_dir}/app.sh"
    execute_command = "chmod +x '{{ .Path }}' && sudo -n env {{ .Vars }} bash -c 'set -E; trap \"echo imagekit: failed at line \\$LINENO of the provisioning script >&2\" ERR; __imagekit_script=$1; shift; . \"$__imagekit_script\"' imagekit '{{ .Path }}'"
    environment_vars = [
      "IMAGEKIT_SRC=/tmp/imagekit/src",
      "IMAGEKIT_TARGET=ami",
    ]
  }

  provisioner "shell" {
    inline = [
      "set -eu",
      "mkdir -p /etc/systemd/system/multi-user.target.wants",
      "cat > /etc/systemd/system/imagekit-tts-inference.service.tmp <<'IMAGEKIT_UNIT'",
      "# Written by imagekit: spec tts, image tts-inference. The AMI's counterpart of the Dockerfile's",
      "# final stage (USER, ENV, WORKDIR, CMD): it starts the service at boot.",
      "[Unit]",
      "Description=imagekit tts image tts-inference",
      "Wants=network-online.target",
      "After=network-online.target",
      "",
      "[Service]",
      "Type=simple",
      "User=app",
      "Environment=\"MODEL_PATH=/opt/models/tts.pt\"",
      "Environment=\"PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"",
      "Environment=\"PYTHONPATH=/opt/app\"",
      "Environment=\"VIRTUAL_ENV=/opt/venv\"",
      "WorkingDirectory=/opt/app",
      "ExecStart=/opt/venv/bin/python -m app.server --port 7860",
      "Restart=on-failure",
      "RestartSec=5",
      "",
      "[Install]",
      "WantedBy=multi-user.target",
      "IMAGEKIT_UNIT",
      "chmod 0644 /etc/systemd/system/imagekit-tts-inference.service.tmp",
      "mv -f /etc/systemd/system/imagekit-tts-inference.service.tmp /etc/systemd/system/imagekit-tts-inference.service",
      "ln -sfn /etc/systemd/system/imagekit-tts-inference.service /etc/systemd/system/multi-user.target.wants/imagekit-tts-inference.service",
      "echo 'imagekit: installed and enabled /etc/systemd/system/imagekit-tts-inference.service'",
    ]
    execute_command = "chmod +x '{{ .Path }}' && sudo -n sh '{{ .Path }}'"
  }

  provisioner "shell" {
    inline = [
      "sudo -n rm -rf /tmp/imagekit",
    ]
  }

  post-processor "manifest" {
    output     = "packer-manifest.json"
    strip_path = true
    custom_data = {
      "layer"      = "app"
      "layer_hash" = "1b8531f956b47fbd0280c64a1cb9fcaf7c0b76d036ed2f3c73d8788a9cffbbab"
    }
  }
}
