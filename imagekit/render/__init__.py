"""Renderers: pure functions from a spec to text (Dockerfiles, Packer HCL, provisioning scripts)."""
