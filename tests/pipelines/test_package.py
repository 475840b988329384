"""Model packages: ``medseg export MODEL --format package`` writes one ``NAME.medseg.zip``
that every command takes as MODEL; a changed byte or a crafted archive is refused."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import ConfigError
from medseg.pipelines.package import open_package

CASE_SHAPE = (32, 32, 24)


@pytest.fixture(scope="module")
def lits_cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medseg.datasets.synthetic import synthesize

    root = tmp_path_factory.mktemp("lits")
    synthesize("lits", root, cases=2, shape=CASE_SHAPE, seed=3)
    return root


@pytest.fixture(scope="module")
def package(ct_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medseg.pipelines.package import write_package

    return write_package(ct_model_dir, tmp_path_factory.mktemp("packages"), name="lits-tiny")


def labels_in(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: np.asarray(nib.load(path).dataobj) for path in folder.glob("*.nii.gz")}


def test_export_writes_one_file_with_a_manifest(ct_model_dir, tmp_path, medseg_cli) -> None:
    result = medseg_cli("export", ct_model_dir, "--format", "package", "-o", tmp_path)
    assert result.code == 0, result.err
    written = tmp_path / f"{ct_model_dir.name}.medseg.zip"
    assert written.is_file() and list(tmp_path.iterdir()) == [written]
    with zipfile.ZipFile(written) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("manifest.json"))
    assert names == {
        "manifest.json",
        "config.yaml",
        "weights.safetensors",
        "plan.json",
        "provenance.json",
    }
    assert set(manifest["files"]) == names - {"manifest.json"}


def test_predicting_from_the_package_gives_the_directory_s_labels(
    ct_model_dir, package, lits_cases, tmp_path, medseg_cli
) -> None:
    for model, output in ((ct_model_dir, "from_dir"), (package, "from_zip")):
        result = medseg_cli(
            "predict", model, lits_cases, "-o", tmp_path / output, "--device", "cpu"
        )
        assert result.code == 0, result.err
    from_dir, from_zip = labels_in(tmp_path / "from_dir"), labels_in(tmp_path / "from_zip")
    assert len(from_dir) == 2 and from_dir.keys() == from_zip.keys()
    for name in from_dir:
        assert np.array_equal(from_dir[name], from_zip[name])
    info = medseg_cli("info", package, "--json")
    assert info.code == 0 and '"name": "unetpp"' in info.out


def _rewrite(source: Path, target: Path, change: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            copy.writestr(info.filename, change.get(info.filename, original.read(info)))
        for name in set(change) - set(original.namelist()):
            copy.writestr(name, change[name])
    return target


def test_a_changed_byte_is_refused_in_one_line(package, lits_cases, tmp_path, medseg_cli) -> None:
    with zipfile.ZipFile(package) as archive:
        weights = bytearray(archive.read("weights.safetensors"))
    weights[-5] ^= 0x01
    altered = _rewrite(package, tmp_path / "altered.medseg.zip", {"weights.safetensors": weights})
    result = medseg_cli("predict", altered, lits_cases, "-o", tmp_path / "out")
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "weights.safetensors does not match the package's SHA-256 manifest" in result.err
    assert not (tmp_path / "out").exists()

    flipped = bytearray(package.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01  # inside the compressed weights
    damaged = tmp_path / "damaged.medseg.zip"
    damaged.write_bytes(bytes(flipped))
    with pytest.raises(ConfigError, match=r"damaged\.medseg\.zip: .*weights\.safetensors"):
        open_package(damaged)


@pytest.mark.parametrize(
    ("member", "data", "message"),
    [
        ("../escape.yaml", b"x", "unexpected member '../escape.yaml'"),
        ("/etc/cron.d/x", b"x", "unexpected member '/etc/cron.d/x'"),
        ("model.pkl", b"x", "unexpected member 'model.pkl'"),
        ("config.yaml", b" " * (2 << 20), "config.yaml declares 2097152 bytes"),
    ],
)
def test_crafted_archives_are_refused_before_reading(
    package, tmp_path, member, data, message
) -> None:
    crafted = _rewrite(package, tmp_path / "crafted.medseg.zip", {member: data})
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("/", "/")):
        open_package(crafted)


def test_a_zip_that_is_no_package_is_named(tmp_path) -> None:
    path = tmp_path / "notes.medseg.zip"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ConfigError, match=r"notes\.medseg\.zip: not a zip file"):
        open_package(path)
