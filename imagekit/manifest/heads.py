"""What this machine has seen of each signed log: the newest sequence number and its record's digest, per store.

Like TUF's trusted metadata: a log that later reads shorter, or with a different record at a number already seen,
was rolled back or forked, and readers refuse it. The store alone cannot show that its newest records and head were
removed together; this file can, for every store this machine has read before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

from imagekit.errors import StoreError
from imagekit.fsutil import atomic_write
from imagekit.inputs import JsonInputError, load_json
from imagekit.paths import config_dir

_lock = threading.Lock()


@dataclass(frozen=True)
class Seen:
    """The newest record of a log that a reader here has verified."""

    seq: int
    digest: str


def heads_dir() -> Path:
    """<config dir>/trusted-heads: one JSON file per store."""
    return config_dir() / "trusted-heads"


class SeenHeads:
    """The seen heads of one store (keyed by its URL), read and written as one small JSON file."""

    def __init__(self, store_url: str, folder: Path | None = None) -> None:
        self.store_url = store_url
        name = hashlib.sha256(store_url.encode("utf-8")).hexdigest()[:32]
        self.path = (folder or heads_dir()) / f"{name}.json"

    def _read(self) -> dict[str, Seen]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"cannot read the seen log heads {self.path}: {exc.strerror or exc}") from None
        try:
            doc = load_json(raw)
            logs = doc["logs"] if isinstance(doc, dict) and doc.get("store") == self.store_url else None
            if not isinstance(logs, dict):
                raise JsonInputError("not a seen-heads file of this store")
            return {str(k): Seen(int(v["seq"]), str(v["digest"])) for k, v in logs.items()}
        except (JsonInputError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(
                f"the seen log heads {self.path} are damaged ({exc}); remove the file to trust the store as it is now"
            ) from None

    def get(self, log: str) -> Seen | None:
        """The newest record of a log seen here, or None."""
        with _lock:
            return self._read().get(log)

    def update(self, log: str, seen: Seen) -> None:
        """Remember a newer head (never an older one); a folder that cannot be written only loses the protection."""
        with _lock:
            data = self._read()
            old = data.get(log)
            if old is not None and old.seq >= seen.seq:
                return
            data[log] = seen
            doc = {
                "store": self.store_url,
                "logs": {k: {"seq": v.seq, "digest": v.digest} for k, v in sorted(data.items())},
            }
            with contextlib.suppress(OSError):
                atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True) + "\n", mode=0o600)
