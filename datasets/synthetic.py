"""Phantoms written in the exact on-disk layouts of the public datasets.

Written by hand because no library generates these phantoms in these layouts. Every
phantom is seeded per case (case ``i`` of seed ``s`` is the same whatever the number of
cases), so tests and the demo are reproducible. The drawing lives in ``phantoms_mri``
(BraTS, MSD), ``phantoms_ct`` (LiTS), ``phantoms_em`` (ISBI) and ``phantoms_rgb`` (ISIC);
this module writes the files: names, folders, dtypes, orientation, spacing and label
values as the real releases have them.

Layouts: ``brats``, ``lits``, ``msd`` (Decathlon ``Task01_BrainTumour``: one 4D file per
case), ``nnunet`` (nnU-Net v2 ``Dataset001_BrainTumour``: one file per channel, region
labels; read with the ``msd`` layout), ``em`` and ``isic``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile

from medseg.datasets.phantoms_ct import lits_phantom
from medseg.datasets.phantoms_em import isbi_phantom
from medseg.datasets.phantoms_mri import brats_phantom
from medseg.datasets.phantoms_rgb import isic_phantom
from medseg.errors import ConfigError
from medseg.files import write_atomic, write_text_atomic

Shape = tuple[int, ...]

# BraTS 2021 label values -> the Decathlon's (1 oedema, 2 non-enhancing core, 3 enhancing).
_MSD_LABELS = np.array([0, 2, 1, 0, 3], dtype=np.uint8)
_MSD_CHANNELS = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
_ISIC_SIZES = ((600, 450), (1022, 767), (1024, 768), (640, 480))
_ISBI_NM = (4.0, 4.0, 50.0)


def brats_affine(shape: Shape) -> np.ndarray:
    """The affine of released BraTS scans: 1 mm, x and y flipped (LPS voxel order)."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return affine


def lits_affine(shape: Shape, spacing: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """A LiTS-like affine: negative x and y scales (LPS voxel order, as the scanner's DICOM
    stored it), the scan centred in x and y, a table position in z (mm)."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (
        spacing[0] * (shape[0] - 1) / 2 + rng.uniform(-20, 20),
        spacing[1] * (shape[1] - 1) / 2 + rng.uniform(-20, 20),
        -round(rng.uniform(100, 700), 1),
    )
    return affine


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``data`` with ``affine`` (qform and sform, scanner space, mm) atomically."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return write_atomic(path, lambda temporary: nib.save(image, temporary))


def write_brats(out_dir: Path, cases: int, shape: Shape | None, seed: int) -> list[Path]:
    """Write ``cases`` phantoms in the BraTS 2021 layout under ``out_dir``; return case folders.

    Each folder is ``BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz``:
    int16 images, uint8 labels 0/1/2/4, 1 mm spacing, the released scans' orientation;
    ``shape`` defaults to BraTS's 240x240x155.
    """
    shape = shape or (240, 240, 155)
    folders = []
    affine = brats_affine(shape)
    for index in range(cases):
        images, labels = brats_phantom(shape, np.random.default_rng([seed, index]))
        case_id = f"BraTS2021_{index:05d}"
        folder = out_dir / case_id
        folder.mkdir(parents=True, exist_ok=True)
        for sequence, image in images.items():
            write_nifti(folder / f"{case_id}_{sequence}.nii.gz", image, affine)
        write_nifti(folder / f"{case_id}_seg.nii.gz", labels, affine)
        folders.append(folder)
    return folders


def write_lits(out_dir: Path, cases: int, shape: Shape | None, seed: int) -> list[Path]:
    """Write ``volume-N.nii`` (int16 HU) + ``segmentation-N.nii`` (uint8 0/1/2) pairs,
    uncompressed as LiTS ships them; return the volumes.

    ``shape`` defaults to 512x512 with 75-987 slices drawn per case; voxel sizes follow
    from the field of view and the span scanned (0.6-0.94 mm in-plane at 512).
    """
    written = []
    for index in range(cases):
        rng = np.random.default_rng([seed, index])
        case_shape = shape or (512, 512, int(rng.integers(75, 988)))
        image, labels, spacing = lits_phantom(case_shape, rng)
        affine = lits_affine(case_shape, spacing, rng)
        written.append(write_nifti(out_dir / f"volume-{index}.nii", image, affine))
        write_nifti(out_dir / f"segmentation-{index}.nii", labels, affine)
    return written


def _brain_case(shape: Shape, seed: int, index: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Channels (FLAIR, T1w, T1gd, T2w; float32) and Decathlon labels of one brain."""
    images, labels = brats_phantom(shape, np.random.default_rng([seed, index]))
    channels = [images[s].astype(np.float32) for s in ("flair", "t1", "t1ce", "t2")]
    return channels, _MSD_LABELS[labels]


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=4) + "\n")


def write_msd(out_dir: Path, cases: int, shape: Shape | None, seed: int) -> list[Path]:
    """Write a Decathlon ``Task01_BrainTumour``-like root: ``dataset.json``, ``imagesTr/``
    (one 4D float32 file of 4 channels per case), ``labelsTr/`` (uint8 0-3) and one test
    image in ``imagesTs/``; return the training images. ``shape`` defaults to 240x240x155.
    """
    shape = shape or (240, 240, 155)
    affine = brats_affine(shape)
    for name in ("imagesTr", "labelsTr", "imagesTs"):
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    training, test = [], []
    for index in range(cases + 1):
        channels, labels = _brain_case(shape, seed, index)
        name = f"BRATS_{index + 1:03d}.nii.gz"
        folder = "imagesTr" if index < cases else "imagesTs"
        write_nifti(out_dir / folder / name, np.stack(channels, axis=-1), affine)
        if index < cases:
            write_nifti(out_dir / "labelsTr" / name, labels, affine)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")
    _write_json(
        out_dir / "dataset.json",
        {
            "name": "BRATS",
            "description": "Gliomas segmentation tumour and oedema in on brain images",
            "tensorImageSize": "4D",
            "modality": _MSD_CHANNELS,
            "labels": {
                "0": "background",
                "1": "edema",
                "2": "non-enhancing tumor",
                "3": "enhancing tumour",
            },
            "numTraining": cases,
            "numTest": len(test),
            "training": training,
            "test": test,
        },
    )
    return [out_dir / entry["image"] for entry in training]


def write_nnunet(out_dir: Path, cases: int, shape: Shape | None, seed: int) -> list[Path]:
    """Write an nnU-Net v2 ``Dataset001_BrainTumour``-like root: ``dataset.json`` with region
    labels, ``imagesTr/CASE_000{0-3}.nii.gz`` per channel, ``labelsTr/`` (uint8 0-3), one
    test case in ``imagesTs/``; return each training case's first channel file."""
    shape = shape or (240, 240, 155)
    affine = brats_affine(shape)
    for name in ("imagesTr", "labelsTr", "imagesTs"):
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(cases + 1):
        channels, labels = _brain_case(shape, seed, index)
        case_id = f"BRATS_{index + 1:03d}"
        folder = out_dir / ("imagesTr" if index < cases else "imagesTs")
        for number, channel in enumerate(channels):
            write_nifti(folder / f"{case_id}_{number:04d}.nii.gz", channel, affine)
        if index < cases:
            write_nifti(out_dir / "labelsTr" / f"{case_id}.nii.gz", labels, affine)
            written.append(folder / f"{case_id}_0000.nii.gz")
    _write_json(
        out_dir / "dataset.json",
        {
            "channel_names": _MSD_CHANNELS,
            "labels": {
                "background": 0,
                "whole tumor": [1, 2, 3],
                "tumor core": [2, 3],
                "enhancing tumor": [3],
            },
            "regions_class_order": [1, 2, 3],
            "numTraining": cases,
            "file_ending": ".nii.gz",
        },
    )
    return written


def _write_stack(path: Path, stack: np.ndarray) -> Path:
    """An (x, y, z) uint8 stack as a multi-page ImageJ TIFF calibrated at ISBI's 4x4x50 nm."""
    return write_atomic(
        path,
        lambda temporary: tifffile.imwrite(
            temporary,
            stack.transpose(2, 1, 0),
            imagej=True,
            resolution=(1000 / _ISBI_NM[0], 1000 / _ISBI_NM[1]),
            metadata={"spacing": _ISBI_NM[2] / 1000, "unit": "micron", "axes": "ZYX"},
        ),
    )


def write_em(out_dir: Path, cases: int, shape: Shape | None, seed: int) -> list[Path]:
    """Write ISBI 2012-like stacks: ``train-volume.tif`` + ``train-labels.tif`` for case 0,
    ``train-NN-volume.tif`` + ``train-NN-labels.tif`` for the others, and an unlabelled
    ``test-volume.tif``; uint8, labels 0 membrane / 255 cell. Return the training volumes.
    ``shape`` (x, y, sections) defaults to ISBI's 512x512x30."""
    shape = shape or (512, 512, 30)
    written = []
    for index in range(cases + 1):
        image, labels = isbi_phantom(shape, np.random.default_rng([seed, index]))
        name = "test" if index == cases else ("train" if index == 0 else f"train-{index:02d}")
        path = _write_stack(out_dir / f"{name}-volume.tif", image)
        if index < cases:
            _write_stack(out_dir / f"{name}-labels.tif", labels)
            written.append(path)
    return written


def write_isic(out_dir: Path, cases: int, shape: Shape | None, seed: int) -> list[Path]:
    """Write ISIC 2018 Task 1-like pairs: ``ISIC2018_Task1-2_Training_Input/ISIC_XXXXXXX.jpg``
    (RGB) and ``ISIC2018_Task1_Training_GroundTruth/ISIC_XXXXXXX_segmentation.png`` (0/255);
    return the images. ``shape`` (width, height) defaults to sizes of the release, varied
    per case."""
    images_dir = out_dir / "ISIC2018_Task1-2_Training_Input"
    masks_dir = out_dir / "ISIC2018_Task1_Training_GroundTruth"
    images_dir.mkdir(parents=True, exist_ok=True)
    masks_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(cases):
        rng = np.random.default_rng([seed, index])
        size = shape or _ISIC_SIZES[rng.integers(len(_ISIC_SIZES))]
        picture, mask = isic_phantom(size, rng)
        case_id = f"ISIC_{index:07d}"
        quality = int(rng.integers(85, 96))
        written.append(
            write_atomic(
                images_dir / f"{case_id}.jpg",
                functools.partial(picture.save, format="JPEG", quality=quality),
            )
        )
        write_atomic(
            masks_dir / f"{case_id}_segmentation.png",
            functools.partial(mask.save, format="PNG"),
        )
    return written


@dataclass(frozen=True)
class PhantomWriter:
    """How ``synthesize`` writes one layout: ``write(out_dir, cases, shape, seed)`` (shape None:
    the real dataset's sizes) and how many sizes a shape has."""

    write: Callable[[Path, int, Shape | None, int], list[Path]]
    dims: int


WRITERS: dict[str, PhantomWriter] = {
    "brats": PhantomWriter(write_brats, 3),
    "lits": PhantomWriter(write_lits, 3),
    "msd": PhantomWriter(write_msd, 3),
    "nnunet": PhantomWriter(write_nnunet, 3),
    "em": PhantomWriter(write_em, 3),
    "isic": PhantomWriter(write_isic, 2),
}


# Peak memory per voxel while a phantom is built, measured: a 128^3 BraTS case (four
# channels and a label) added 103 MB, 49 bytes a voxel; rounded up for the other layouts.
PHANTOM_BYTES_PER_VOXEL = 64


def synthesize(
    layout: str,
    out_dir: str | Path,
    *,
    cases: int,
    shape: Shape | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``cases`` phantoms of ``layout`` into ``out_dir``; return one path per case
    (its folder or main image file).

    ``shape`` defaults to the real dataset's sizes. ``out_dir`` must be new or empty (a
    real dataset there would be replaced by phantoms) unless ``overwrite``. Raises
    ``ConfigError`` for an unknown layout, a shape of the wrong dimensionality, under 8
    voxels a side or too large for the memory available, or an ``out_dir`` that is a file
    or a non-empty folder.
    """
    from medseg.pipelines.resources import available_memory

    if layout not in WRITERS:
        raise ConfigError(f"no phantom for layout {layout!r}; layouts: {', '.join(WRITERS)}")
    writer = WRITERS[layout]
    shape = tuple(shape) if shape else None
    if shape is not None and (len(shape) != writer.dims or min(shape) < 8):
        raise ConfigError(
            f"{layout} phantoms need {writer.dims} sizes of at least 8, got {list(shape)}"
        )
    if shape is not None:
        needed = math.prod(shape) * PHANTOM_BYTES_PER_VOXEL
        available = available_memory()
        if available is not None and needed > available:
            raise ConfigError(
                f"--shape {' '.join(map(str, shape))}: a phantom that size needs about "
                f"{needed / 2**30:.1f} GB, {available / 2**30:.1f} GB is available"
            )
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and not overwrite and any(out_dir.iterdir()):
        raise ConfigError(
            f"{out_dir}: not empty; phantoms would replace its files (use --overwrite, or "
            "an empty folder)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    return writer.write(out_dir, cases, shape, seed)
