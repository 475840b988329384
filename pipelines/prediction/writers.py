"""Names of prediction outputs, and whether one already written is complete (the writing
itself is ``medseg.datasets.image_io.write_label_like``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.datasets.image_io import (
    BITMAP_SUFFIXES,
    KEPT_FORMATS,
    NIFTI_FILE_SUFFIXES,
    TIFF_SUFFIXES,
)

# 2D pictures whose masks are written as PNG, in the dataset's own label values (ISIC 0/255).
PICTURE_SUFFIXES = BITMAP_SUFFIXES + TIFF_SUFFIXES


def output_name(case_id: str, reference: Path, spatial_dims: int = 3) -> str:
    """``<case_id>`` plus the reference's file type: MetaImage stays MetaImage (``.mha``),
    NRRD stays NRRD (``.nrrd``), a 2D picture (PNG, JPEG, BMP, TIFF; ``spatial_dims`` 2)
    gives a PNG mask, everything else (NIfTI, DICOM, 3D TIFF ...) gives ``.nii.gz``."""
    name = reference.name.lower()
    if spatial_dims == 2 and name.endswith(PICTURE_SUFFIXES) and not reference.is_dir():
        return f"{case_id}.png"
    for suffix, kept in KEPT_FORMATS.items():
        if name.endswith(suffix) and not reference.is_dir():
            return f"{case_id}{kept}"
    return f"{case_id}{NIFTI_FILE_SUFFIXES[0]}"


def finished_output(target: Path, reference: Path) -> bool:
    """Whether ``target`` is a complete output for the image ``reference``: a regular file
    whose header reads, whose data is all there and whose grid (shape and affine) is the
    reference's. A 0-byte, truncated or foreign file under the output's name is not."""
    import stat

    from medseg.datasets.headers import UnusableImageError
    from medseg.datasets.image_io import read_header

    try:
        if not stat.S_ISREG(target.lstat().st_mode):
            return False
        output, source = read_header(target), read_header(reference)
    except (OSError, UnusableImageError):
        return False
    if output.shape != source.shape or output.channels != 1:
        return False
    if source.affine is None or target.name.endswith(".png"):
        return True  # a bitmap (PNG, JPEG) has no geometry to compare
    return output.affine is not None and bool(np.allclose(output.affine, source.affine, atol=1e-3))
