"""A tiny TTS-shaped model: characters -> embedding -> two 1-D convolutions -> per-character voice parameters
(pitch, loudness, duration, brightness) -> a harmonic waveform at 16 kHz, written as 16-bit PCM WAV.

Not a real voice, but real inference: the weights are loaded from a file at start, every request runs the
network on the CPU or GPU, and the output is deterministic for a given text and weights file.
"""

from __future__ import annotations

import io
import json
import math
import struct
import wave
from pathlib import Path
from typing import Any

import torch

SAMPLE_RATE = 16000
MAX_CHARS = 1000
SILENCE_S = 0.1  # lead-in and tail, so even one character gives a well-formed, audible clip
FADE_S = 0.005  # per-character fade in/out, so segments join without clicks


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read the weights file (safetensors layout, float32 only; see scripts/make_weights.py)."""
    raw = bytearray(Path(path).read_bytes())  # writable, so torch.frombuffer does not warn
    if len(raw) < 8:
        raise ValueError(f"{path}: too short to be a weights file")
    (hlen,) = struct.unpack_from("<Q", raw, 0)
    if hlen > len(raw) - 8:
        raise ValueError(f"{path}: header length {hlen} exceeds the file")
    header: dict[str, Any] = json.loads(bytes(raw[8 : 8 + hlen]).decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + hlen
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        count = (end - begin) // 4
        if count != math.prod(shape) or base + end > len(raw):
            raise ValueError(f"{path}: tensor {name} offsets do not match its shape {shape}")
        t = torch.frombuffer(raw, dtype=torch.float32, offset=base + begin, count=count)
        tensors[name] = t.reshape(shape).clone()
    return tensors, {str(k): str(v) for k, v in meta.items()}


class TinyTTS(torch.nn.Module):
    """Embedding -> conv -> conv -> linear head giving 4 voice parameters per character."""

    def __init__(self, vocab: int, dim: int, hidden: int, params: int, kernel: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = torch.nn.Embedding(vocab, dim)
        self.conv1 = torch.nn.Conv1d(dim, hidden, kernel, padding=kernel // 2)
        self.conv2 = torch.nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2)
        self.head = torch.nn.Linear(hidden, params)

    @classmethod
    def from_file(cls, path: str | Path) -> TinyTTS:
        """Build the model with the shapes the file declares and load its weights."""
        tensors, meta = load_weights(path)
        if meta.get("format") != "imagekit-tts":
            raise ValueError(f"{path}: not an imagekit-tts weights file (format={meta.get('format')!r})")
        vocab, dim = tensors["embed.weight"].shape
        hidden, _, kernel = tensors["conv1.weight"].shape
        params = tensors["head.weight"].shape[0]
        model = cls(int(vocab), int(dim), int(hidden), int(params), int(kernel))
        model.load_state_dict(tensors, strict=True)
        model.eval()
        return model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] -> raw parameters [T, params]."""
        x = self.embed(ids).t().unsqueeze(0)  # [1, dim, T]
        x = torch.tanh(self.conv1(x))
        x = torch.tanh(self.conv2(x))
        return self.head(x.squeeze(0).t())  # [T, params]

    def encode(self, text: str) -> torch.Tensor:
        """Text as bucket ids: Unicode codepoints modulo the vocabulary, so any script maps somewhere."""
        return torch.tensor([ord(c) % self.vocab for c in text], dtype=torch.long)

    @torch.inference_mode()
    def synthesize(self, text: str) -> torch.Tensor:
        """Text -> float waveform in [-1, 1] at SAMPLE_RATE."""
        ids = self.encode(text).to(self.embed.weight.device)
        p = torch.sigmoid(self.forward(ids)).double().cpu()
        pitch = 110.0 + 190.0 * p[:, 0]  # Hz
        loud = 0.25 + 0.5 * p[:, 1]
        dur = 0.08 + 0.14 * p[:, 2]  # seconds per character
        bright = p[:, 3]
        silence = torch.zeros(round(SILENCE_S * SAMPLE_RATE), dtype=torch.float64)
        parts = [silence]
        phase = 0.0
        fade_n = round(FADE_S * SAMPLE_RATE)
        for i in range(len(ids)):
            n = round(float(dur[i]) * SAMPLE_RATE)
            f = float(pitch[i])
            t = torch.arange(n, dtype=torch.float64) / SAMPLE_RATE
            ang = 2.0 * math.pi * f * t + phase
            b = float(bright[i])
            seg = torch.sin(ang) + 0.5 * b * torch.sin(2.0 * ang) + 0.25 * b * b * torch.sin(3.0 * ang)
            seg = seg / (1.0 + 0.5 * b + 0.25 * b * b)
            env = torch.ones(n, dtype=torch.float64)
            k = min(fade_n, n // 2)
            if k > 0:
                ramp = torch.linspace(0.0, 1.0, k, dtype=torch.float64)
                env[:k] = ramp
                env[n - k :] = ramp.flip(0)
            parts.append(seg * env * float(loud[i]))
            phase = (phase + 2.0 * math.pi * f * n / SAMPLE_RATE) % (2.0 * math.pi)
        parts.append(silence)
        return torch.cat(parts).clamp(-1.0, 1.0)


def to_wav(wave_f: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Float waveform -> 16-bit PCM mono WAV bytes."""
    pcm = (wave_f * 32767.0).round().clamp(-32768, 32767).to(torch.int16)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(_pcm_bytes(pcm))
    return buf.getvalue()


def _pcm_bytes(pcm: torch.Tensor) -> bytes:
    # Without numpy (the CPU example installs none): copy the samples into a bytearray through a tensor view.
    out = bytearray(pcm.numel() * 2)
    torch.frombuffer(out, dtype=torch.int16).copy_(pcm)
    if struct.pack("=h", 1) != struct.pack("<h", 1):  # big-endian host: WAV wants little-endian
        out = bytearray(b"".join(out[i : i + 2][::-1] for i in range(0, len(out), 2)))
    return bytes(out)
