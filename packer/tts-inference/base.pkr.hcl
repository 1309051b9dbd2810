variable "parent_ami" {
  type        = string
  description = "AMI id this layer starts from (the parent layer's AMI)"
  default     = ""
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

source "amazon-ebs" "base" {
  region        = "us-east-1"
  instance_type = "g5.xlarge"
  ami_name      = "imagekit-tts-base-c8260e137a3f3224-${var.build_id}"
  ssh_username  = "ubuntu"
  tags = {
    "Name"                 = "imagekit tts/base"
    "imagekit:image"       = "tts-inference"
    "imagekit:layer"       = "base"
    "imagekit:layer-hash"  = "c8260e137a3f3224d9be3a684d386008b8e6e24e050284fad7262f34deff95dc"
    "imagekit:parent-hash" = ""
    "imagekit:pin:cuda"    = "13.0"
    "imagekit:pin:cudnn"   = "9"
    "imagekit:pin:driver"  = "580"
    "imagekit:pin:python"  = "3.11"
    "imagekit:pin:torch"   = "2.14.1"
    "imagekit:spec"        = "tts"
    "team"                 = "speech"
  }
  snapshot_tags = {
    "Name"                 = "imagekit tts/base"
    "imagekit:image"       = "tts-inference"
    "imagekit:layer"       = "base"
    "imagekit:layer-hash"  = "c8260e137a3f3224d9be3a684d386008b8e6e24e050284fad7262f34deff95dc"
    "imagekit:parent-hash" = ""
    "imagekit:pin:cuda"    = "13.0"
    "imagekit:pin:cudnn"   = "9"
    "imagekit:pin:driver"  = "580"
    "imagekit:pin:python"  = "3.11"
    "imagekit:pin:torch"   = "2.14.1"
    "imagekit:spec"        = "tts"
    "team"                 = "speech"
  }
  run_tags = {
    "Name"           = "imagekit-build tts/base"
    "imagekit:build" = "true"
  }
  custom_endpoint_ec2 = var.ec2_endpoint
  ssh_interface       = "public_ip"

  source_ami_filter {
    filters = {
      "architecture"        = "x86_64"
      "name"                = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"
      "virtualization-type" = "hvm"
    }
    owners = [
      "099720109477",
    ]
    most_recent = true
  }

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
  name = "base"
  sources = [
    "source.amazon-ebs.base",
  ]

  provisioner "shell" {
    script          = "${var.script_dir}/base.sh"
    execute_command = "chmod +x '{{ .Path }}' && sudo -n env {{ .Vars }} bash -c 'set -E; trap \"echo imagekit: failed at line \\$LINENO of the provisioning script >&2\" ERR; __imagekit_script=$1; shift; . \"$__imagekit_script\"' imagekit '{{ .Path }}'"
    environment_vars = [
      "IMAGEKIT_SRC=/tmp/imagekit/src",
      "IMAGEKIT_TARGET=ami",
    ]
  }

  post-processor "manifest" {
    output     = "packer-manifest.json"
    strip_path = true
    custom_data = {
      "layer"      = "base"
      "layer_hash" = "c8260e137a3f3224d9be3a684d386008b8e6e24e050284fad7262f34deff95dc"
    }
  }
}
