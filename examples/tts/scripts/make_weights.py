#!/usr/bin/env python3
"""Write the example TTS model's weights, deterministically, with nothing but the Python standard library.

Format (the safetensors layout, so any safetensors reader can open it too):
  8 bytes   little-endian u64 N: length of the JSON header
  N bytes   JSON header: {"<tensor>": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
            "__metadata__": {"format": "imagekit-tts", "version": "1", "vocab": ..., ...}} (keys sorted)
  rest      the tensors' little-endian float32 data, back to back, offsets relative to the end of the header

The numbers come from random.Random(SEED).random(), whose sequence CPython keeps stable across versions, and
float32 packing rounds the same everywhere, so the file (and its sha256, pinned in the specs) is reproducible:

  python3 examples/tts/scripts/make_weights.py            # writes examples/tts/models/tts.pt
  python3 examples/tts/scripts/make_weights.py --check    # exits 1 if the committed file differs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import struct
import sys
from pathlib import Path

SEED = 20261121
VOCAB = 1024  # characters are hashed into this many buckets: codepoint % VOCAB (so Chinese text works)
DIM = 32  # embedding width
HIDDEN = 64  # conv channels
KERNEL = 3
PARAMS = 4  # per character: pitch, loudness, duration, brightness
SAMPLE_RATE = 16000

# (name, shape, scale): weights are uniform in [-scale, scale]; scales keep activations in a useful range.
TENSORS: list[tuple[str, tuple[int, ...], float]] = [
    ("embed.weight", (VOCAB, DIM), 1.0),
    ("conv1.weight", (HIDDEN, DIM, KERNEL), (3.0 / (DIM * KERNEL)) ** 0.5),
    ("conv1.bias", (HIDDEN,), 0.1),
    ("conv2.weight", (HIDDEN, HIDDEN, KERNEL), (3.0 / (HIDDEN * KERNEL)) ** 0.5),
    ("conv2.bias", (HIDDEN,), 0.1),
    ("head.weight", (PARAMS, HIDDEN), (6.0 / HIDDEN) ** 0.5),
    ("head.bias", (PARAMS,), 0.0),
]

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "tts.pt"


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def build() -> bytes:
    """The weights file's bytes."""
    rng = random.Random(SEED)
    header: dict[str, object] = {}
    chunks: list[bytes] = []
    offset = 0
    for name, shape, scale in TENSORS:
        n = _count(shape)
        values = [(rng.random() * 2.0 - 1.0) * scale for _ in range(n)]
        data = struct.pack(f"<{n}f", *values)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    header["__metadata__"] = {
        "format": "imagekit-tts",
        "version": "1",
        "seed": str(SEED),
        "vocab": str(VOCAB),
        "sample_rate": str(SAMPLE_RATE),
    }
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # pad so the float data starts 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def main(argv: list[str] | None = None) -> int:
    """Write (or --check) the weights file and print its sha256."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true", help="compare with the existing file instead of writing")
    args = ap.parse_args(argv)
    data = build()
    digest = hashlib.sha256(data).hexdigest()
    if args.check:
        ok = args.out.exists() and args.out.read_bytes() == data
        print(f"{'ok' if ok else 'DIFFERS'} {args.out} sha256={digest}")
        return 0 if ok else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    print(f"{args.out} {len(data)} bytes sha256={digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
