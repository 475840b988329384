"""Installation: one import package ``medseg``, never top-level ``datasets`` and friends."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_subpackages_and_no_top_level_folders(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("medseg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {
        name.split("/")[0]
        for name in names
        if not name.split("/")[0].endswith((".dist-info", ".data"))
    }
    assert top_level == {"medseg"}
    for package in ("networks", "datasets", "transforms", "pipelines"):
        assert f"medseg/{package}/__init__.py" in names
    assert "medseg/networks/unetpp.py" in names
    for job in ("training", "prediction", "evaluation", "pruning", "export"):
        assert f"medseg/pipelines/{job}/__init__.py" in names
    assert "medseg/pipelines/prediction/segmenter.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "medseg = medseg.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_package_maps_the_folders():
    import medseg.datasets
    import medseg.networks
    import medseg.pipelines
    import medseg.transforms

    assert Path(medseg.networks.__file__).parent == ROOT / "networks"
    assert Path(medseg.datasets.__file__).parent == ROOT / "datasets"
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util; print(importlib.util.find_spec('datasets'))",
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT.parent,
    )
    assert str(ROOT) not in probe.stdout
