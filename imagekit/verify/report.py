"""The verification report (JSON) and the pin/policy comparison of a probe's findings with the spec."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import struct
import wave
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from imagekit.fsutil import atomic_write
from imagekit.inputs import bound_lines, clip
from imagekit.names import service_unit_path
from imagekit.spec import Health, LoadedSpec, Smoke
from imagekit.verify.policy import GPU_HINT, GpuPolicy, gpu_failures, gpu_visible
from imagekit.verify.unasked import find_unasked, pip_entry_name, unasked_failures

__all__ = ["GPU_HINT", "gpu_visible"]  # re-exported: callers read them from here

REPORT_SCHEMA = "imagekit.verify/v1"


class HealthResult(BaseModel):
    """How the service's readiness check went."""

    model_config = ConfigDict(extra="forbid")

    path: str
    ready: bool = False
    seconds_to_ready: float | None = None
    last_status: int | None = None
    last_body: str = ""
    timeout: float = 0.0


class SmokeResult(BaseModel):
    """The smoke request and what came back."""

    model_config = ConfigDict(extra="forbid")

    method: str
    path: str
    status: int | None = None
    bytes: int = 0
    content_type: str = ""
    latency_ms: float | None = None
    sha256: str = ""
    audio: dict[str, Any] | None = None
    error: str = ""


# a report's file stays well under what the record writer reads back (MAX_RECORD_BYTES); compact past this
MAX_PRETTY_BYTES = 8 * 1024 * 1024


class Report(BaseModel):
    """One boot-and-verify run of an image on a host."""

    model_config = ConfigDict(extra="forbid")

    schema_: str = Field(default=REPORT_SCHEMA, alias="schema")
    ok: bool = False
    spec: str
    image: str
    image_ref: str
    image_id: str = ""
    target: str = "docker"
    host: str = ""
    started_at: str = ""
    finished_at: str = ""
    seconds: float = 0.0
    gpu_policy: str = "required"
    gpu_visible: bool = False
    probe: dict[str, Any] = Field(default_factory=dict)
    health: HealthResult | None = None
    smoke: SmokeResult | None = None
    failures: list[str] = Field(default_factory=list)
    # Python packages no lock names that are excepted from that check (the base's system packages, venv seeds)
    excepted_packages: list[str] = Field(default_factory=list)
    containers: list[str] = Field(default_factory=list)
    # AMI target: the image's systemd unit as found on the booted instance (path, present, enabled, exec_start, ...)
    service_unit: dict[str, Any] | None = None
    # AMI target with aws.prewarm: the boot's pre-read of weights and venv (seconds, files, bytes, by)
    prewarm: dict[str, Any] | None = None

    def to_json(self) -> str:
        """The report as pretty JSON with sorted keys; compact when indenting would take it past MAX_PRETTY_BYTES
        (a probe of many small values grows many times over), so the record writer can always read it back."""
        doc = self.model_dump(mode="json", by_alias=True)
        pretty = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False)
        if len(pretty) <= MAX_PRETTY_BYTES // 4:  # characters: at most 4 bytes each
            return pretty
        if len(pretty.encode("utf-8")) <= MAX_PRETTY_BYTES:
            return pretty
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def write(self, path: Path) -> Path:
        """Write the report atomically and return its path; its lists of findings are bounded first (a probe of
        20,000 unasked packages is 20,000 failures: the report, and the record that embeds it, keep the first)."""
        self.failures = bound_lines(self.failures)
        self.excepted_packages = bound_lines(self.excepted_packages, limit=2000, width=400)
        self.containers = bound_lines(self.containers)
        atomic_write(path, self.to_json() + "\n")
        return path


# --- versions ------------------------------------------------------------------------------------------


def public_version(version: str) -> str:
    """A PEP 440 version without its local label: '2.13.0+cpu' -> '2.13.0'."""
    return version.split("+", 1)[0].strip()


def _parts(version: str) -> list[str]:
    return [p for p in re.split(r"[.]", public_version(version)) if p]


def version_matches(pin: str, found: str) -> bool:
    """True when `found` satisfies the pin: equal public versions, or the pin is a shorter prefix ('3.11' ~ '3.11.2').

    A pin with a local label ('2.13.0+cpu') must match the found version exactly.
    """
    if "+" in pin:
        return pin.strip() == found.strip()
    want, got = _parts(pin), _parts(found)
    if len(want) > len(got):
        # '2.5.0' pinned, '2.5' found: trailing zeros are the same release
        got = got + ["0"] * (len(want) - len(got))
    return got[: len(want)] == want


def normalize_name(name: str) -> str:
    """PEP 503 project name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    """name==version pins of a requirements file; other lines (options, ranges, comments) are not pins."""
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        line = line.split(";", 1)[0].strip()  # environment markers
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*===?\s*([^\s\\]+)", line)
        if m:
            pins[normalize_name(m.group(1))] = m.group(3)
    return pins


def cudnn_major(version: Any) -> int | None:
    """cuDNN's major from torch.backends.cudnn.version(): 8906 -> 8 (cuDNN 8), 90100 -> 9 (cuDNN >= 9)."""
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        return None
    return version // 10000 if version >= 10000 else version // 1000


def _section(probe: dict[str, Any], name: str) -> tuple[dict[str, Any], str]:
    value = probe.get(name)
    if not isinstance(value, dict):
        return {}, f"the probe returned no {name} section"
    if "error" in value and len(value) <= 2:
        return value, str(value["error"])
    return value, ""


def asked_names(loaded: LoadedSpec, image: str) -> tuple[set[str], list[str]]:
    """Every project a lock, a `pip:` entry or `torch:` of the chain names (normalized), and where they come from."""
    chain = loaded.chain(image)
    asked: set[str] = set()
    sources: list[str] = []
    for name, layer in chain:
        if layer.requirements:
            sources.append(layer.requirements)
            with contextlib.suppress(OSError):  # compare() reports the unreadable lock
                asked |= set(parse_lock(loaded.local(layer.requirements).read_text(encoding="utf-8")))
        if layer.pip:
            sources.append(f"layers.{name}.pip")
            asked |= {pip_entry_name(p) for p in layer.pip}
    if loaded.resolved(image).torch:
        asked.add("torch")
    return asked, sources


def excepted_packages(probe: dict[str, Any], loaded: LoadedSpec, image: str) -> list[str]:
    """The image's Python packages no lock names that the check excepts (the base's system packages, venv seeds)."""
    return find_unasked(probe, asked_names(loaded, image)[0]).excepted


# --- the comparison ------------------------------------------------------------------------------------


def compare(
    probe: dict[str, Any],
    loaded: LoadedSpec,
    image: str,
    *,
    target: str = "docker",
    gpu: GpuPolicy | None = None,
    layer_of: Callable[[str], str | None] | None = None,
) -> list[str]:
    """Pin/policy failures of a probe against the spec's image; each names the expected and the found value.

    `gpu` overrides the image's verify.gpu for this run (the --gpu flag). A Python package that no lock of the
    chain names fails too; `layer_of(name)` says which layer it appeared in, where the host can tell.
    """
    res = loaded.resolved(image)
    chain = loaded.chain(image)
    gpu_policy: GpuPolicy = gpu or loaded.verify_for(image).gpu
    failures: list[str] = []

    torch, torch_err = _section(probe, "torch")
    if res.torch:
        if torch_err or not torch.get("version"):
            failures.append(f"torch: expected {res.torch}, found none (import failed: {torch_err or 'no version'})")
        elif not version_matches(res.torch, str(torch["version"])):
            failures.append(f"torch: expected {res.torch}, found {torch['version']}")
    if not torch_err and torch.get("version"):
        built = torch.get("cuda")
        if res.cuda == "none":
            if built is not None:
                failures.append(f"torch CUDA build: expected none (a CPU build, cuda: none), found CUDA {built}")
        elif built is None:
            failures.append(f"torch CUDA build: expected CUDA {res.cuda}, found a CPU-only build")
        elif not version_matches(res.cuda, str(built)):
            failures.append(f"torch CUDA build: expected CUDA {res.cuda}, found CUDA {built}")
        if res.cudnn and res.cuda != "none":
            major = cudnn_major(torch.get("cudnn"))
            if major is None:
                failures.append(f"cuDNN: expected major {res.cudnn}, found none (torch.backends.cudnn.version())")
            elif str(major) != res.cudnn.split(".", 1)[0]:
                failures.append(f"cuDNN: expected major {res.cudnn}, found {torch.get('cudnn')} (major {major})")

    python, py_err = _section(probe, "python")
    if res.python:
        found_py = str(python.get("version") or "")
        if py_err or not found_py:
            failures.append(f"python: expected {res.python}, found none ({py_err or 'no version'})")
        elif not version_matches(res.python, found_py):
            failures.append(f"python: expected {res.python}, found {found_py}")

    pins: dict[str, tuple[str, str]] = {}
    for _name, layer in chain:
        if layer.requirements:
            req = loaded.local(layer.requirements)
            try:
                text = req.read_text(encoding="utf-8")
            except OSError as exc:
                failures.append(f"pip: cannot read the requirements lock {layer.requirements}: {exc.strerror}")
                continue
            for pkg, ver in parse_lock(text).items():
                pins[pkg] = (ver, layer.requirements)
        for pkg, ver in parse_lock("\n".join(layer.pip)).items():
            pins[pkg] = (ver, "pip")
    asked, sources = asked_names(loaded, image)
    failures += unasked_failures(find_unasked(probe, asked), sources, layer_of)
    pins.pop("torch", None)  # pinned by `torch:` above, with its local-label rule
    if pins:
        pip, pip_err = _section(probe, "pip")
        if pip_err:
            failures.append(f"pip: cannot list installed packages in the image: {pip_err}")
        else:
            installed = {normalize_name(k): str(v) for k, v in (pip.get("packages") or {}).items()}
            for pkg, (ver, src) in sorted(pins.items()):
                found = installed.get(pkg)
                if found is None:
                    failures.append(f"pip {pkg}: expected {ver} ({src}), found not installed")
                elif not version_matches(ver, found):
                    failures.append(f"pip {pkg}: expected {ver} ({src}), found {found}")

    apt_pins = [(n.split("=", 1)[0], n.split("=", 1)[1] if "=" in n else "") for _, layer in chain for n in layer.apt]
    if apt_pins:
        dpkg, dpkg_err = _section(probe, "dpkg")
        if dpkg_err:
            failures.append(f"apt: cannot list installed Debian packages in the image: {dpkg_err}")
        else:
            debs = dpkg.get("packages") or {}
            for pkg, ver in apt_pins:
                if pkg not in debs:
                    failures.append(f"apt {pkg}: expected {ver or 'installed'}, found not installed")
                elif ver and debs[pkg] != ver:
                    failures.append(f"apt {pkg}: expected {ver}, found {debs[pkg]}")

    found_models = probe.get("models") if isinstance(probe.get("models"), dict) else {}
    assert isinstance(found_models, dict)
    for _name, layer in chain:
        for model in layer.models:
            entry = found_models.get(model.dest)
            if not isinstance(entry, dict):
                failures.append(f"model {model.dest}: expected sha256 {model.sha256}, found nothing (not probed)")
            elif "error" in entry:
                failures.append(
                    f"model {model.dest}: expected sha256 {model.sha256}, found unreadable: {entry['error']}"
                )
            elif entry.get("sha256") != model.sha256:
                failures.append(f"model {model.dest}: expected sha256 {model.sha256}, found {entry.get('sha256')}")

    user, user_err = _section(probe, "user")
    if res.user and not user_err and "uid" in user:
        found_user = f"{user.get('name') or '?'} (uid {user['uid']})"
        if user["uid"] == 0 or (user.get("name") and user["name"] != res.user):
            failures.append(f"user: expected {res.user}, found {found_user}")
        moded = {m.dest: m.mode for _, layer in chain for m in layer.models if m.mode}
        for path, entry in sorted(found_models.items()):
            if not isinstance(entry, dict) or "error" in entry:
                continue
            if path in moded:
                # `mode` (e.g. 0600): owned by the service user, readable by it, writable by nobody else
                failures += _owned_model_failures(path, entry, moded[path], res.user, user)
            elif entry.get("writable"):
                failures.append(f"model {path}: expected read-only for {res.user}, found writable by {found_user}")

    failures += gpu_failures(probe, gpu_policy)
    visible = gpu_visible(probe)
    if target == "ami" and res.driver and visible:
        # On Docker the driver belongs to the host, not the image; on an AMI it is part of what was built.
        driver = str((probe.get("nvidia_smi") or {}).get("driver") or "")
        if not driver:
            failures.append(f"driver: expected branch {res.driver}, found none (nvidia-smi)")
        elif driver.split(".", 1)[0] != res.driver.split(".", 1)[0]:
            failures.append(f"driver: expected branch {res.driver}, found {driver}")
    return failures


def _owned_model_failures(path: str, entry: dict[str, Any], mode: str, owner: str, user: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if entry.get("readable") is False:
        out.append(f"model {path}: expected readable by {owner} (mode {mode}), found not readable")
    found_mode = entry.get("mode")
    if found_mode is not None and found_mode != mode:
        out.append(f"model {path}: expected mode {mode} (writable by nobody but {owner}), found {found_mode}")
    if "uid" in entry and entry["uid"] != user.get("uid"):
        out.append(f"model {path}: expected owned by {owner} (uid {user.get('uid')}), found uid {entry['uid']}")
    return out


def check_service_unit(found: Mapping[str, Any] | None, loaded: LoadedSpec, image: str, *, target: str) -> list[str]:
    """AMI target: the failure when the image has a command but its systemd unit is missing or not enabled.

    `found` is what vmcheck.py reported (read_unit); a Docker image starts from its CMD, so it has no unit.
    """
    if target != "ami" or not loaded.resolved(image).command:
        return []
    path = service_unit_path(image)
    if not found or not found.get("present"):
        return [f"service unit: expected {path} (starts the service at boot), found none"]
    if not found.get("enabled"):
        wants = found.get("wants") or "multi-user.target.wants"
        return [f"service unit: {path} is not enabled (no {wants} link), so the service does not start at boot"]
    return []


# --- health and smoke (shared by every host: docker here, the AMI target's instance check) ------------------


def check_health(policy: Health, result: HealthResult) -> list[str]:
    """The failure of a readiness check that never answered 200, if it did not."""
    if result.ready:
        return []
    return [
        f"health: {policy.path} did not answer 200 within {policy.timeout:g}s "
        f"(last: {result.last_status or 'no answer'} {result.last_body[:300]})"
    ]


def check_smoke(loaded: LoadedSpec, policy: Smoke, result: SmokeResult, body: bytes) -> list[str]:
    """Failures of a smoke response against `expect` (status, bytes, content type, latency, reference audio).

    Records the audio comparison's metrics in `result.audio`.
    """
    exp = policy.expect
    if result.error:
        return [f"smoke {policy.method} {policy.path}: no response: {result.error}"]
    failures: list[str] = []
    if result.status != exp.status:
        snippet = body[:200].decode("utf-8", "replace")
        failures.append(f"smoke status: expected {exp.status}, found {result.status} ({snippet})")
    if result.bytes < exp.min_bytes:
        failures.append(f"smoke response too short: expected at least {exp.min_bytes} bytes, found {result.bytes}")
    if exp.content_type and result.content_type.split(";", 1)[0].strip() != exp.content_type:
        failures.append(f"smoke content type: expected {exp.content_type}, found {result.content_type or 'none'}")
    if exp.max_latency_ms is not None and (result.latency_ms or 0) > exp.max_latency_ms:
        failures.append(f"smoke latency: expected at most {exp.max_latency_ms:g} ms, found {result.latency_ms} ms")
    if exp.reference and result.status == exp.status:
        try:
            ref = loaded.local(exp.reference).read_bytes()
        except OSError as exc:
            return [*failures, f"smoke reference {exp.reference}: cannot read: {exc.strerror}"]
        audio_failures, metrics = compare_wav(body, ref, exp.tolerance)
        result.audio = {**metrics, "reference": exp.reference}
        failures += audio_failures
    return failures


# --- audio ---------------------------------------------------------------------------------------------


def _decode_wav(data: bytes) -> tuple[int, int, int, list[float]]:
    """(channels, sample width, rate, samples of channel 0 in [-1, 1]) of 16-bit PCM WAV bytes."""
    with wave.open(io.BytesIO(data), "rb") as w:
        channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
        frames = w.readframes(n)
    if width != 2:
        raise ValueError(f"expected 16-bit PCM, found {8 * width}-bit samples")
    count = len(frames) // 2
    values = struct.unpack(f"<{count}h", frames[: 2 * count])
    return channels, width, rate, [v / 32768.0 for v in values[::channels]]


def compare_wav(got: bytes, reference: bytes, tolerance: float) -> tuple[list[str], dict[str, Any]]:
    """Failures and metrics of a WAV response against the reference: format, length and normalized RMS error.

    The RMS error is rms(got - ref) / rms(ref) over the common length; lengths may differ by `tolerance` too.
    """
    try:
        ref_ch, _, ref_rate, ref = _decode_wav(reference)
    except (wave.Error, EOFError, ValueError, struct.error) as exc:
        return [f"audio: the reference is not a readable WAV file: {exc}"], {}
    try:
        ch, _, rate, out = _decode_wav(got)
    except (wave.Error, EOFError, ValueError, struct.error) as exc:
        return [f"audio: the response is not a readable 16-bit PCM WAV: {exc}"], {}
    failures: list[str] = []
    metrics: dict[str, Any] = {
        "samples": len(out),
        "reference_samples": len(ref),
        "sample_rate": rate,
        "channels": ch,
        "tolerance": tolerance,
    }
    if (ch, rate) != (ref_ch, ref_rate):
        failures.append(f"audio format: expected {ref_ch} channel(s) at {ref_rate} Hz, found {ch} at {rate} Hz")
    length_diff = abs(len(out) - len(ref)) / max(len(ref), 1)
    metrics["length_diff"] = round(length_diff, 6)
    if length_diff > tolerance:
        failures.append(
            f"audio length: expected {len(ref)} samples (±{tolerance:.0%}), found {len(out)} ({length_diff:.1%} off)"
        )
    n = min(len(out), len(ref))
    ref_energy = math.fsum(x * x for x in ref[:n])
    err_energy = math.fsum((a - b) * (a - b) for a, b in zip(out[:n], ref[:n], strict=True))
    rms_diff = math.sqrt(err_energy / ref_energy) if ref_energy > 0 else (0.0 if err_energy == 0 else math.inf)
    metrics["rms_diff"] = round(rms_diff, 6) if math.isfinite(rms_diff) else None
    if rms_diff > tolerance:
        failures.append(
            f"audio differs from the reference: normalized RMS difference {rms_diff:.4f} > tolerance {tolerance}"
        )
    return failures, metrics


def judged(
    probe: dict[str, Any], loaded: LoadedSpec, name: str, gpu_rule: Any, *, target: str = "docker", layer_of: Any = None
) -> list[str]:
    """compare(), with a shape the boundary let through but a judge did not expect made a failure, not a crash."""
    try:
        return compare(probe, loaded, name, target=target, gpu=gpu_rule or None, layer_of=layer_of)
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as exc:
        return [f"probe: a value of an unexpected shape ({type(exc).__name__}: {clip(str(exc), 200)})"]
