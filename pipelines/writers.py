"""Write a label map on the exact grid and in the file type of the image it was made from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg.files import write_atomic

# Input suffix -> output suffix for the formats kept as they are. A MetaImage or NRRD
# header with a separate data file (.mhd, .nhdr) gets the single-file form of its format,
# so an output is always one file and its write stays atomic.
KEPT_FORMATS = {".mha": ".mha", ".mhd": ".mha", ".nrrd": ".nrrd", ".nhdr": ".nrrd"}
# 2D pictures whose masks are written as PNG, in the dataset's own label values (ISIC 0/255).
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


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
    return f"{case_id}.nii.gz"


def finished_output(target: Path, reference: Path) -> bool:
    """Whether ``target`` is a complete output for the image ``reference``: a regular file
    whose header reads, whose data is all there and whose grid (shape and affine) is the
    reference's. A 0-byte, truncated or foreign file under the output's name is not."""
    import stat

    from medseg.datasets.headers import UnusableImageError, inspect_image

    try:
        if not stat.S_ISREG(target.lstat().st_mode):
            return False
        output, source = inspect_image(target), inspect_image(reference)
    except (OSError, UnusableImageError):
        return False
    if output.shape != source.shape or output.channels != 1:
        return False
    if source.affine is None or target.name.endswith(".png"):
        return True  # a bitmap (PNG, JPEG) has no geometry to compare
    return output.affine is not None and bool(np.allclose(output.affine, source.affine, atol=1e-3))


def nifti_label_image(
    source: nib.spatialimages.SpatialImage, labels: np.ndarray, description: str | None = None
) -> Any:
    """A NIfTI image of ``labels`` (uint8, ``source``'s spatial shape in its index order)
    with ``source``'s header geometry as stored, intensity scaling cleared."""
    labels = np.asarray(labels, dtype=np.uint8)
    header = source.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(None, None)
    header.set_data_shape(labels.shape)
    if description is not None:
        header["descrip"] = description
    # No affine: the header's own geometry fields (qform and sform codes, quaternion,
    # offsets, srow rows, pixdim and qfac) are written as they are. Going through
    # get_qform/set_qform recomputed them, and failed on a real file whose unused
    # (code 0) quaternion is not a rotation ("w2 should be positive").
    return type(source)(labels, None, header=header)


def write_label_like(
    reference: Path, labels: np.ndarray, target: Path, *, description: str | None = None
) -> Path:
    """Write ``labels`` (uint8, the reference's spatial shape in file index order) to
    ``target`` with the reference file's geometry, atomically.

    PNG (``target`` ends in ``.png``): an 8-bit grey picture, rows along the second axis.
    NIfTI: the reference header's geometry fields (qform/sform, their codes, pixdim)
    are copied as stored, intensity scaling is cleared and the data type is uint8. Other
    formats: origin, spacing and direction copied by SimpleITK. ``description`` (at most 80
    ASCII characters) replaces a NIfTI header's ``descrip``.
    """
    labels = np.asarray(labels, dtype=np.uint8)
    if target.name.endswith(".png"):
        from PIL import Image

        picture = Image.fromarray(np.ascontiguousarray(labels.T))
        return write_atomic(target, lambda path: picture.save(path, format="PNG"))
    if target.name.endswith((".nii", ".nii.gz")):
        image = nifti_label_image(nib.load(reference), labels, description)
        return write_atomic(target, lambda path: nib.save(image, path))
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(reference))
    reader.ReadImageInformation()
    image = sitk.GetImageFromArray(labels.transpose(*reversed(range(labels.ndim))))
    image.SetOrigin(reader.GetOrigin()[: labels.ndim])
    image.SetSpacing(reader.GetSpacing()[: labels.ndim])
    direction = np.reshape(reader.GetDirection(), (reader.GetDimension(),) * 2)
    image.SetDirection(direction[: labels.ndim, : labels.ndim].ravel().tolist())
    return write_atomic(target, lambda path: sitk.WriteImage(image, str(path), True))
