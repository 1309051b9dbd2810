"""The compatibility matrix: generated data matches the script, coverage, lookups and the checks."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from imagekit import compat
from imagekit.compat import cuda_key, gpu_problems, gpu_row, matrix, torch_releases, vkey
from imagekit.compat.check import check_versions

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gen_compat.py"
DATA = REPO / "imagekit" / "compat" / "data"


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_compat", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_data_is_what_the_script_generates() -> None:
    files = _gen().generate()
    assert sorted(files) == sorted(p.name for p in DATA.glob("*.yaml"))
    for name, text in files.items():
        assert (DATA / name).read_text() == text, f"{name} was edited by hand or the script changed; rerun it"
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_check_fails_on_a_hand_edit(tmp_path: Path) -> None:
    for name, text in _gen().generate().items():
        (tmp_path / name).write_text(text)
    (tmp_path / "cuda.yaml").write_text((tmp_path / "cuda.yaml").read_text().replace("550.54.14", "540.0"))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--out", str(tmp_path)], check=False, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "cuda.yaml is not what scripts/gen_compat.py generates" in done.stderr


def test_wheel_listing_adds_observed_rows(tmp_path: Path) -> None:
    gen = _gen()
    listing = (
        '<a href="/whl/cu128/torch-2.99.0%2Bcu128-cp312-cp312-manylinux_2_28_x86_64.whl#sha256=ab">x</a>\n'
        "torch-2.99.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl\n"
        "torch-2.99.0+cpu-cp311-cp311-win_amd64.whl\n"
        "torch-2.5.1+cu124-cp313-cp313-linux_x86_64.whl\n"
    )
    observed = tmp_path / "observed.txt"
    added = gen.add_observed(listing, observed)
    assert len(added) == 3  # Linux wheels only: the matrix is about Linux images
    rows = {r["version"]: r for r in gen.torch_doc(gen.read_observed(observed))["releases"]}
    # a release the index does not list (2.99.0) is an observed row; one it lists gets the wheel as a source
    assert rows["2.99.0"]["cuda"] == ["12.8"]
    assert rows["2.99.0"]["python"] == ["3.11", "3.12"]
    assert rows["2.99.0"]["complete"] is False and rows["2.99.0"]["pythons_complete"] is False
    assert rows["2.99.0"]["source"].startswith("observed: ")
    assert "observed: " in rows["2.5.1"]["source"]
    assert gen.add_observed(listing, observed) == []  # idempotent


def test_every_row_names_a_source_and_confidence() -> None:
    m = matrix()
    rows: list[object] = [*m.torch, *m.cuda.values(), *m.gpus.values()]
    for row in rows:
        assert getattr(row, "source", "").strip(), row
        assert getattr(row, "confidence", "") in {"verified", "unverified", "observed"}, row


def test_coverage() -> None:
    m = matrix()
    lines = {r.minor for r in m.torch if r.complete}
    assert {"1.12", "1.13", *(f"2.{i}" for i in range(10))} <= lines
    # from the index (scripts/compat_index.json): every release up to the newest it served, each with its PyPI build
    assert {r.minor for r in m.torch} >= {f"2.{i}" for i in range(16)}
    assert m.generated["index"] == "https://pypi.org/simple" and m.generated["date"]
    for v in ("2.10.0", "2.11.0", "2.12.0", "2.12.1", "2.13.0", "2.14.0", "2.14.1", "2.15.0"):
        build = compat.pypi_build(v)
        assert build is not None and build.confidence == "verified" and "Requires-Dist of torch-" in build.source, v
    assert compat.pypi_build("2.10.0").cuda == "12.8"  # type: ignore[union-attr]
    assert compat.pypi_build("2.11.0").cuda == "13.0"  # type: ignore[union-attr]
    assert {"11.3", "11.4", "11.5", "11.6", "11.7", "11.8", "12.0", "12.4", "12.8", "12.9", "13.0"} <= set(m.cuda)
    assert all(v in m.cudnn for v in m.cuda)
    assert {"sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"} <= set(m.gpus)
    # The seeds pin torch 1.13.1 with CUDA 11.6 and 11.7.
    assert torch_releases("1.13.1")[0].cuda == ("11.6", "11.7")
    (r213,) = [r for r in m.torch if r.version == "2.13.0"]
    assert "3.11" in r213.python and "torch-2.13.0+cpu-cp311" in r213.source  # the index row + the observed wheel
    # Minimum driver branches only ever rise with the CUDA version.
    branches = [m.cuda[v].min_driver_branch for v in sorted(m.cuda, key=vkey)]
    assert branches == sorted(branches)


@pytest.mark.parametrize(
    ("given", "want"),
    [("12.4", "12.4"), ("12.4.1", "12.4"), ("cu124", "12.4"), ("cu118", "11.8"), ("13.0", "13.0"), ("12", None)],
)
def test_cuda_key(given: str, want: str | None) -> None:
    assert cuda_key(given) == want


def test_torch_matching() -> None:
    assert [r.version for r in torch_releases("2.5.1")] == ["2.5.1"]
    assert [r.version for r in torch_releases("2.5")] == ["2.5.0", "2.5.1"]
    assert [r.version for r in torch_releases("2.5.1+cu124")] == ["2.5.1"]
    assert torch_releases("2.5.7") == []
    assert compat.torch_cuda_builds("2.5.1") == ["11.8", "12.1", "12.4"]


def _one(**kw: str) -> compat.Finding:
    found = check_versions(**kw)
    assert len(found) == 1, found
    return found[0]


def test_issue_examples_are_rejected() -> None:
    f = _one(cuda="11.6", torch="2.5.1")
    assert (f.key, f.severity) == ("torch", "error")
    assert f.message == "torch 2.5.1 is built for CUDA 11.8, 12.1, 12.4, not CUDA 11.6"
    assert f.hint == "torch releases built for CUDA 11.6: 1.12.x, 1.13.x"
    f = _one(cuda="12.4", torch="2.4", python="3.13")
    assert f.key == "python"
    assert f.message == "Python 3.13 has no torch 2.4 wheels; torch 2.4 supports Python 3.8, 3.9, 3.10, 3.11, 3.12"
    f = _one(cuda="12.4", driver="535")
    assert f.key == "driver"
    assert f.message == "driver branch 535 is too old for CUDA 12.4, which needs 550 or newer (>= 550.54.14)"
    f = _one(cuda="11.6", cudnn="9")
    assert f.message == "cuDNN 9 is not shipped for CUDA 11.6; it has cuDNN 8"


@pytest.mark.parametrize(
    "pins",
    [
        {"cuda": "12.4", "cudnn": "9", "driver": "550", "python": "3.11", "torch": "2.5.1"},
        {"cuda": "11.7", "cudnn": "8", "python": "3.10", "torch": "1.13.1"},
        {"cuda": "11.6", "python": "3.9", "torch": "1.13.1"},
        {"cuda": "12.8", "driver": "570.124.06", "python": "3.12", "torch": "2.7"},
        {"cuda": "13.0", "python": "3.14", "torch": "2.9.0"},
        {"cuda": "none", "python": "3.11", "torch": "2.13.0"},
        {"cuda": "12.8", "cudnn": "9", "python": "3.14", "torch": "2.10.0"},
        {"cuda": "13.0", "cudnn": "9", "driver": "580", "python": "3.12", "torch": "2.11.0"},
        {"cuda": "13.0", "cudnn": "9", "driver": "580", "python": "3.11", "torch": "2.14.1"},
        {"cuda": "13.2", "cudnn": "9", "driver": "580", "python": "3.15", "torch": "2.15.0"},
        {"cuda": "none", "python": "3.13", "torch": "2.5.1"},  # experimental 3.13 wheels exist
        {"cuda": "none", "driver": "390"},  # cuda none is always allowed
        {"cuda": "12.4", "torch": "2.5.1+cu124"},
    ],
)
def test_good_combinations(pins: dict[str, str]) -> None:
    assert check_versions(**pins) == []


def test_unknown_versions() -> None:
    f = _one(cuda="12.7")
    assert f.message == "unknown CUDA version 12.7" and "13.0" in f.hint
    f = _one(cuda="12.4", torch="2.9.7")
    assert f.severity == "error" and f.message == "unknown torch version 2.9.7 for CUDA 12.4"
    assert "1.12.0 to 2.15.0" in f.hint
    # newer than the matrix: an error, CPU or CUDA alike, naming the newest release and the regenerate command
    for cuda in ("none", "13.0"):
        f = _one(cuda=cuda, torch="2.16.0")
        assert f.severity == "error"
        assert f.message.startswith("torch 2.16.0 is newer than the compatibility matrix (newest known: torch 2.15.0")
        assert "python scripts/gen_compat.py --from-index" in f.hint
    # a CUDA variant of a release the sourced table lacks: PyTorch's index named, not refused
    f = _one(cuda="12.8", torch="2.13.0")
    assert f.severity == "note" and "https://download.pytorch.org/whl/cu128" in f.message
    assert check_versions(cuda="none", torch="2.13.0", python="3.12") == []
    assert _one(torch="1.5").message == "unknown torch version 1.5"
    assert _one(cuda="twelve").message == "'twelve' is not a CUDA version"
    assert _one(cuda="12.4", driver="latest").key == "driver"
    assert _one(cuda="12.4", torch="2.5.1+cpu").message == "torch 2.5.1+cpu is the CPU build, but cuda is 12.4"


def test_gpu_lookups() -> None:
    row = gpu_row("sm_86")
    assert row is not None and row.min_cuda == "11.1"
    assert gpu_row("8.6") == row == gpu_row(86) == gpu_row((8, 6)) == gpu_row(8.6)
    assert gpu_problems("sm_86", "12.4", "2.5.1") == []
    assert gpu_problems("sm_90", "11.7", "1.13.1") == [
        "sm_90 (H100 / H200 (p5)) needs CUDA 11.8 or newer, not 11.7",
        "sm_90 (H100 / H200 (p5)) needs torch 2.0 or newer, not 1.13.1",
    ]
    assert gpu_problems("sm_70", "13.0") == ["sm_70 (V100 (p3)) is not supported after CUDA 12.9, not 13.0"]
    assert gpu_problems("sm_120", "12.8", "2.7.0") == []
    assert gpu_problems("sm_70", "12.8", "2.7.0") == [
        "torch's CUDA 12.8 builds carry no sm_70 code; use a CUDA 12.6 or older build"
    ]
    assert gpu_problems("sm_70", "12.6", "2.7.0") == []
    assert "not in the compatibility matrix" in gpu_problems("sm_99", "12.4")[0]


# --- generated from the package index -----------------------------------------------------------------------------


def test_the_cuda_build_is_read_from_the_wheels_requirements() -> None:
    gen = _gen()
    # the three shapes the index serves: CUDA 11 (old "name (==v)" form), CUDA 12, CUDA 13 (cuda-toolkit, no suffix)
    cu11 = gen.pypi_from_requires(
        ['nvidia-cuda-runtime-cu11 (==11.7.99) ; platform_system == "Linux"', "nvidia-cudnn-cu11 (==8.5.0.96)"]
    )
    assert (cu11["cuda"], cu11["cudnn"], cu11["cudnn_version"]) == ("11.7", "8", "8.5.0.96")
    cu12 = gen.pypi_from_requires(
        ['nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux"', "nvidia-cudnn-cu12==9.10.2.21"]
    )
    assert (cu12["cuda"], cu12["cudnn"]) == ("12.8", "9")
    cu13 = gen.pypi_from_requires(
        [
            'cuda-toolkit[cublas,cudart,cufft]==13.0.2; platform_system == "Linux"',
            'nvidia-cudnn-cu13==9.19.0.56; platform_system == "Linux"',
            'nvidia-nccl-cu13==2.28.9; platform_system == "Linux"',
        ]
    )
    assert (cu13["cuda"], cu13["cudnn_version"]) == ("13.0", "9.19.0.56")
    assert cu13["wheels"] == ["cuda-toolkit", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"]
    assert gen.pypi_from_requires(["filelock", "typing-extensions>=4.10.0"]) is None  # 1.12: bundled libraries


def test_a_table_that_lost_rows_is_never_written(tmp_path: Path) -> None:
    gen = _gen()
    files = gen.generate()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    snap = json.loads((REPO / "scripts" / "compat_index.json").read_text())
    assert gen.lost_rows(files["torch.yaml"], files["torch.yaml"], "torch.yaml") == []
    del snap["releases"]["2.14.0"]
    smaller = gen.generate(index=snap)["torch.yaml"]
    assert gen.lost_rows(files["torch.yaml"], smaller, "torch.yaml") == ["2.14.0"]
    # main() refuses: the committed snapshot lacks nothing, but the data in --out has a row the new table lacks
    (tmp_path / "torch.yaml").write_text(files["torch.yaml"].replace("version: 2.14.0", "version: 2.14.9"))
    before = (tmp_path / "torch.yaml").read_text()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=False, capture_output=True, text=True
    )
    assert done.returncode == 1 and "it would lose rows 2.14.9" in done.stderr, done.stderr
    assert (tmp_path / "torch.yaml").read_text() == before


def test_an_unchanged_index_on_a_later_day_passes_the_check_and_leaves_no_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the index's answer stamped with another day: --check passed only on the day the data was generated
    gen = _gen()
    for name, text in gen.generate().items():
        (tmp_path / name).write_text(text)
    committed = json.loads((REPO / "scripts" / "compat_index.json").read_text())
    later = {**committed, "date": "2099-01-01"}
    monkeypatch.setattr(gen, "fetch_index", lambda *a, **k: json.loads(json.dumps(later)))
    monkeypatch.setattr(gen, "INDEX_FILE", tmp_path / "compat_index.json")
    assert gen.main(["--from-index", "--check", "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert gen.main(["--from-index", "--out", str(tmp_path)]) == 0
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before  # nothing rewritten, no index file
    # a release the committed data lacks still fails the check, naming it
    newer = json.loads(json.dumps(later))
    newer["releases"]["9.9.9"] = newer["releases"][max(newer["releases"], key=vkey)]
    monkeypatch.setattr(gen, "fetch_index", lambda *a, **k: newer)
    capsys.readouterr()
    assert gen.main(["--from-index", "--check", "--out", str(tmp_path)]) == 1
    assert "new: 9.9.9" in capsys.readouterr().err


def test_the_generated_data_records_its_date_and_index() -> None:
    text = (DATA / "torch.yaml").read_text()
    assert "generated:\n  by: python scripts/gen_compat.py --from-index\n  date: '20" in text
    assert "  index: https://pypi.org/simple\n" in text
    assert "download.pytorch.org is not reachable from here" in text  # the sourced variants, marked as such


@pytest.mark.slow
def test_from_index_check_passes_on_the_committed_data() -> None:
    # asks the package index for every torch release (one listing + one pip metadata read each: a few minutes)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--from-index", "--check"], check=False, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_every_release_from_2_10_validates_with_the_cuda_of_its_pypi_wheel(tmp_path: Path) -> None:
    releases = [r for r in matrix().torch if vkey(r.version) >= (2, 10, 0)]
    assert releases and releases[-1].version == compat.torch_range()[1]
    for r in releases:
        build = compat.pypi_build(r.version)
        assert build is not None, r.version
        for python in r.python:
            pins = {"cuda": build.cuda, "cudnn": build.cudnn, "python": python, "torch": r.version}
            assert check_versions(**pins, wheels=True) == [], (r.version, python)
            assert check_versions(**pins) == [], (r.version, python)
        # another CUDA variant: PyTorch's index is named (a note), never a refusal
        other = "12.8" if build.cuda != "12.8" else "12.6"
        (note,) = check_versions(cuda=other, python=r.python[-1], torch=r.version)
        assert (
            note.severity == "note" and f"https://download.pytorch.org/whl/cu{other.replace('.', '')}" in note.message
        )
