"""Issue 23, "wrong or slow answers to bad input": crafted configs, model settings,
headers and files, each refused in one line naming the file or key, quickly."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from medseg.datasets.image_io import IMAGE_SUFFIXES
from medseg.datasets.synthetic import synthesize
from tests.reliability.test_arguments import one_line_refusal

SHAPE = (24, 24, 16)
LAUGHS = "\n".join(
    ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, 9)]
)


@pytest.fixture
def volume(tmp_path) -> Path:
    synthesize("lits", tmp_path / "lits", cases=1, shape=SHAPE, seed=3)
    return tmp_path / "lits" / "volume-0.nii"


def model_with(source: Path, folder: Path, change) -> Path:
    model = Path(shutil.copytree(source, folder))
    config = yaml.safe_load((model / "config.yaml").read_text())
    change(config)
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    return model


def run_config(folder: Path, data: Path, **data_keys) -> Path:
    config = {
        "data": {"layout": "lits", "root": str(data)} | data_keys,
        "network": {"name": "unetpp", "preset": "tiny"},
        "output": str(folder / "run"),
        "tracking": {"enabled": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---- 10: alias bombs cost nothing and print nothing large ----


@pytest.mark.parametrize("where", ["model config", "run config"])
def test_alias_bomb_is_refused_at_once_in_one_short_line(
    where, tmp_path, volume, ct_model_dir, medseg_cli
):
    started = time.perf_counter()
    if where == "model config":
        model = Path(shutil.copytree(ct_model_dir, tmp_path / "model"))
        (model / "config.yaml").write_text(LAUGHS)
        result = medseg_cli("predict", model, volume, "-o", tmp_path / "out")
    else:
        config = tmp_path / "bomb.yaml"
        config.write_text(LAUGHS + "\ndata: *a8\n")
        result = medseg_cli("-q", "train", config)
    assert time.perf_counter() - started < 5
    one_line_refusal(result, 2, "config.yaml" if where == "model config" else "bomb.yaml")
    assert len(result.err) < 400, result.err[:1000]


def test_a_recursive_alias_is_refused(tmp_path, medseg_cli):
    config = tmp_path / "loop.yaml"
    config.write_text("data: &loop [*loop]\n")
    one_line_refusal(medseg_cli("-q", "train", config), 2, "loop.yaml", "refused")


def test_a_long_bad_value_is_shortened_in_the_message(tmp_path, volume, medseg_cli):
    config = run_config(tmp_path, volume.parent)
    result = medseg_cli("-q", "train", config, "--set", f"train.epochs={'9' * 5000}x")
    one_line_refusal(result, 2, "train.epochs")
    assert len(result.err) < 400


# ---- 11: a model's inference settings are validated ----


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("sw_batch_size", 0, "inference.sw_batch_size"),
        ("overlap", 1.0, "inference.overlap"),
        ("mode", "median", "inference.mode"),
        ("roi_size", [4096, 4096, 4096], "inference.roi_size"),
    ],
)
def test_out_of_range_inference_settings_name_the_key(
    key, value, named, tmp_path, volume, ct_model_dir, medseg_cli
):
    model = model_with(
        ct_model_dir, tmp_path / "model", lambda c: c["inference"].update({key: value})
    )
    result = medseg_cli("predict", model, volume, "-o", tmp_path / "out")
    one_line_refusal(result, 2, named)
    assert "volume-0" not in result.err


# ---- 12: a fold that does not exist ----


def test_fold_beyond_folds_is_refused_whatever_the_key_order(tmp_path, volume, medseg_cli):
    config = run_config(tmp_path, volume.parent, fold=3, folds=2)
    one_line_refusal(medseg_cli("-q", "train", config), 2, "data", "fold 3 does not exist")


# ---- 14: geometry checked from the header, before any voxel ----


def test_nan_in_the_affine_names_the_file_before_inference(
    tmp_path, volume, ct_model_dir, medseg_cli, monkeypatch
):
    image = nib.load(volume)
    header = image.header.copy()
    header["srow_x"] = [np.nan, 0, 0, 0]
    header["sform_code"] = 1
    bad = tmp_path / "in" / "nan_affine.nii"
    bad.parent.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), None, header), bad)
    import medseg.pipelines.prediction.segmenter as segmenter

    def no_voxels(*args, **kwargs):
        raise AssertionError("voxels were read")

    monkeypatch.setattr(segmenter.Segmenter, "infer", no_voxels)
    result = medseg_cli("predict", ct_model_dir, bad, "-o", tmp_path / "out")
    assert result.code == 1, result.out + result.err
    failures = [line for line in result.out.splitlines() if line.startswith("failed")]
    assert len(failures) == 1 and "nan_affine.nii" in failures[0]
    assert "header affine holds NaN" in failures[0] and "voxels were read" not in failures[0]


# ---- 16: a MetaImage header cannot point outside its folder ----


@pytest.mark.parametrize("data_file", ["/etc/passwd", "../secret.raw", "link.raw"])
def test_metaimage_data_file_outside_its_folder_is_refused(
    data_file, tmp_path, ct_model_dir, medseg_cli
):
    folder = tmp_path / "in"
    folder.mkdir()
    (tmp_path / "secret.raw").write_bytes(bytes(range(256)) * 64)
    (folder / "link.raw").symlink_to(tmp_path / "secret.raw")
    header = folder / "scan.mhd"
    header.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 16 16 16\nElementType = MET_UCHAR\n"
        f"ElementSpacing = 1 1 1\nElementDataFile = {data_file}\n"
    )
    result = medseg_cli("predict", ct_model_dir, header, "-o", tmp_path / "out")
    assert result.code == 1, result.out + result.err
    assert "scan.mhd" in result.out and "outside the header's folder" in result.out


# ---- 17: a named pipe is refused, never opened ----


@pytest.fixture
def deadline():
    """Fail a test that blocks (on a named pipe) instead of hanging the suite."""

    def expired(signum, frame):
        raise TimeoutError("blocked for 60 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("given", ["the file", "its folder"])
def test_named_pipes_are_refused_without_hanging(
    given, tmp_path, volume, ct_model_dir, medseg_cli, deadline
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(volume, inputs / "real.nii")
    os.mkfifo(inputs / "x.nii.gz")
    named = [inputs / "x.nii.gz", inputs / "real.nii"] if given == "the file" else [inputs]
    result = medseg_cli("predict", ct_model_dir, *named, "-o", tmp_path / "out")
    assert result.code == 1, result.out + result.err
    assert "x.nii.gz" in result.out and "not a regular file" in result.out
    assert (tmp_path / "out" / "real.nii.gz").is_file()


def test_a_named_pipe_as_config_is_refused(tmp_path, medseg_cli, deadline):
    os.mkfifo(tmp_path / "config.yaml")
    one_line_refusal(medseg_cli("-q", "train", tmp_path / "config.yaml"), 2, "not a regular file")


def test_a_named_pipe_as_datalist_is_refused(tmp_path, volume, medseg_cli, deadline):
    os.mkfifo(tmp_path / "datalist.json")
    config = run_config(tmp_path, volume.parent, datalist=str(tmp_path / "datalist.json"))
    one_line_refusal(medseg_cli("-q", "train", config), 2, "datalist.json", "not a regular file")


# ---- 18: an unreachable registry is given up on quickly ----


def test_models_uri_with_a_failing_server_is_not_retried_for_minutes(
    tmp_path, volume, medseg_cli, monkeypatch
):
    hits = []

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(503)
            self.end_headers()

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_port}")
    try:
        result = medseg_cli("predict", "models:/liver/1", volume, "-o", tmp_path / "out")
    finally:
        server.shutdown()
    one_line_refusal(result, 2, "models:/liver/1", "cannot fetch")
    assert 1 <= len(hits) <= 3, hits


# ---- 20: one line, not four ----


def test_a_yaml_tag_in_set_is_one_line(tmp_path, volume, medseg_cli):
    config = run_config(tmp_path, volume.parent)
    result = medseg_cli(
        "-q", "train", config, "--set", "train.lr=!!python/object/apply:os.system [id]"
    )
    one_line_refusal(result, 2, "--set", "train.lr")


def test_a_folder_without_images_is_one_line_without_itk_warnings(tmp_path, ct_model_dir, capfd):
    from medseg.cli import main

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    argv = sys.argv
    sys.argv = ["medseg", "predict", str(ct_model_dir), str(folder), "-o", str(tmp_path / "out")]
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        sys.argv = argv
    assert exit_.value.code == 2
    # capfd reads file descriptor 2 itself, where ITK's C++ warnings go.
    assert capfd.readouterr().err.strip().splitlines() == [
        f"error: {folder}: no image files found ({', '.join(IMAGE_SUFFIXES)})"
    ]


# ---- 21: which DICOM series, by a stated rule; MetaImage stays MetaImage ----


def write_series(folder: Path, uid: str, slices: int, value: int) -> None:
    volume = sitk.GetImageFromArray(np.full((slices, 24, 24), value, dtype=np.int16))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(slices):
        plane = volume[:, :, z]
        plane.SetMetaData("0020|0032", f"0\\0\\{2.0 * z}")
        plane.SetMetaData("0020|000e", uid)
        plane.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(folder / f"{uid}_{z:02d}.dcm"))
        writer.Execute(plane)


def test_equal_dicom_series_are_chosen_by_the_lowest_uid_and_named(tmp_path, caplog):
    from medseg.datasets.headers import dicom_series_files

    write_series(tmp_path, "1.2.3.9", 6, 10)
    write_series(tmp_path, "1.2.3.10", 6, 20)
    with caplog.at_level("WARNING"):
        files = dicom_series_files(tmp_path)
    assert all(Path(f).name.startswith("1.2.3.10_") for f in files)
    assert "using 1.2.3.10" in caplog.text and "lowest UID" in caplog.text


def test_metaimage_header_and_data_inputs_come_back_as_metaimage(
    tmp_path, volume, ct_model_dir, medseg_cli
):
    image = sitk.ReadImage(str(volume))
    folder = tmp_path / "in"
    folder.mkdir()
    sitk.WriteImage(image, str(folder / "scan.mhd"))
    result = medseg_cli("predict", ct_model_dir, folder / "scan.mhd", "-o", tmp_path / "out")
    assert result.code == 0, result.out + result.err
    written = sitk.ReadImage(str(tmp_path / "out" / "scan.mha"))
    assert written.GetSize() == image.GetSize()
    assert np.allclose(written.GetDirection(), image.GetDirection())
    assert np.allclose(written.GetOrigin(), image.GetOrigin())
