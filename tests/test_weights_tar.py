"""Root-owned weights as a reproducible tar (imagekit/weights_tar.py): which weights take it, its bytes, its staging.

On the real engine, tests/test_venv_layers.py rebuilds a runtime under an app with weights and checks that the
weights' layer keeps its digest at the registry; tests/test_buildah_engine.py does the same for an app-only rebuild.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from imagekit.errors import BuildFailed, UsageError
from imagekit.spec_model import ModelFile
from imagekit.weights_tar import WEIGHT_TARS_DIR, as_tar, prune_tars, stage_tar, tar_name, write_tar

DATA = os.urandom(70_001)  # not a multiple of the 512-byte block
SHA = hashlib.sha256(DATA).hexdigest()


def _model(dest: str = "/opt/models/w.bin", mode: str | None = None, sha: str = SHA) -> ModelFile:
    return ModelFile(src="w.bin", dest=dest, sha256=sha, mode=mode)


@pytest.mark.parametrize(
    ("dest", "mode", "tar"),
    [
        ("/opt/models/w.bin", None, True),
        ("/models/w.bin", None, True),
        ("/srv/tts/v1/w.bin", None, True),
        ("/opt/models/w.bin", "0600", False),  # owned by the service user: COPY --chown after the user exists
        ("/usr/share/models/w.bin", None, False),  # a system folder: a tar must not reset its owner or mode
        ("/home/app/w.bin", None, False),
        ("/lib/models/w.bin", None, False),  # /lib is a link on merged-/usr: a tar's folder would replace it
        ("/w.bin", None, False),  # straight under /: the tar would have to carry / itself
    ],
)
def test_which_weights_go_in_as_a_tar(dest: str, mode: str | None, tar: bool) -> None:
    assert as_tar(_model(dest, mode)) is tar


def _tar(model: ModelFile, data: bytes = DATA) -> bytes:
    out = io.BytesIO()
    assert write_tar(io.BytesIO(data), len(data), model, out) == hashlib.sha256(data).hexdigest()
    return out.getvalue()


def test_the_tar_is_the_same_bytes_every_time_with_fixed_owner_mode_and_time() -> None:
    first = _tar(_model())
    assert first == _tar(_model())
    assert len(first) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(first)) as tf:
        members = tf.getmembers()
        assert [(m.name, m.isdir(), m.mode, m.uid, m.gid, m.mtime) for m in members] == [
            ("opt", True, 0o755, 0, 0, 0),
            ("opt/models", True, 0o755, 0, 0, 0),
            ("opt/models/w.bin", False, 0o444, 0, 0, 0),
        ]
        extracted = tf.extractfile(members[-1])
        assert extracted is not None and extracted.read() == DATA
    # what decides the bytes decides the name: another dest or digest, another tar
    assert tar_name(_model()) == tar_name(_model())
    assert tar_name(_model("/opt/models/x.bin")) != tar_name(_model())
    assert tar_name(_model(sha="0" * 64)) != tar_name(_model())
    assert tar_name(_model()).startswith(WEIGHT_TARS_DIR + "/")


def test_a_short_read_is_an_error_not_a_short_tar() -> None:
    with pytest.raises(OSError, match="early"):
        write_tar(io.BytesIO(DATA[:100]), len(DATA), _model(), io.BytesIO())


def test_staging_checks_the_pin_and_reuses_the_tar(tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(DATA)
    staged = stage_tar(tmp_path, _model(), src)
    assert staged == tmp_path / tar_name(_model())
    assert staged.read_bytes() == _tar(_model())
    inode = staged.stat().st_ino
    assert stage_tar(tmp_path, _model(), src).stat().st_ino == inode  # kept, not rewritten
    # the file no longer matches its pin: no tar, no temp file, a build failure naming both digests
    src.write_bytes(DATA + b"x")
    other = _model("/opt/models/other.bin")
    with pytest.raises(BuildFailed, match=f"sha256 {hashlib.sha256(DATA + b'x').hexdigest()}.*pins {SHA}"):
        stage_tar(tmp_path, other, src, image="img", layer="app")
    assert sorted(p.name for p in (tmp_path / WEIGHT_TARS_DIR).iterdir()) == [staged.name]


def test_a_linked_weights_folder_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "spec"
    (root / ".imagekit").mkdir(parents=True)
    (root / WEIGHT_TARS_DIR).symlink_to(elsewhere)
    src = root / "w.bin"
    src.write_bytes(DATA)
    with pytest.raises(UsageError, match="follows no links"):
        stage_tar(root, _model(), src)
    assert list(elsewhere.iterdir()) == []


def test_prune_keeps_named_and_recently_used_tars(tmp_path: Path) -> None:
    folder = tmp_path / WEIGHT_TARS_DIR
    folder.mkdir(parents=True)
    old, recent, named = folder / "old.tar", folder / "recent.tar", folder / "named.tar"
    for path in (old, recent, named):
        path.write_bytes(b"t")
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    os.utime(named, (week_ago, week_ago))
    (folder / "notes.txt").write_text("not ours to remove")
    removed = prune_tars(tmp_path, {f"{WEIGHT_TARS_DIR}/named.tar"})
    assert removed == [old]
    assert sorted(p.name for p in folder.iterdir()) == ["named.tar", "notes.txt", "recent.tar"]
