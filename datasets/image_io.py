"""Image files in and out: the one module that knows formats by their suffixes.

Every other module reads and writes images through it: ``read_header`` (what a file's
header says, no voxel read), ``declared_shape`` (a NIfTI header's shape, cheaply),
``read_volume`` (voxels with their geometry) and ``write_label_like`` (a label map on the
grid and in the format of the image it was made from). Arrays are in file index order
(x, y[, z]: column, row, slice) and affines are 4x4 voxel-to-RAS+ in millimetres, as
nibabel gives them, for every format. It lives in ``datasets/``, the first folder of the
data flow, so that discovery, transforms and pipelines all import it downstream.

Importing it is light; nibabel, SimpleITK and MONAI are imported by the functions that
need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medseg.datasets.headers import ImageHeader

NIFTI_FILE_SUFFIXES = (".nii.gz", ".nii")
"""Single-file NIfTI: what nibabel reads and writes without a separate data file."""
NIFTI_SUFFIXES = (*NIFTI_FILE_SUFFIXES, ".hdr", ".img.gz", ".img")
TIFF_SUFFIXES = (".tif", ".tiff")
BITMAP_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + TIFF_SUFFIXES + BITMAP_SUFFIXES + ITK_SUFFIXES
"""Every suffix medseg reads (DICOM series folders have none)."""

KEPT_FORMATS = {".mha": ".mha", ".mhd": ".mha", ".nrrd": ".nrrd", ".nhdr": ".nrrd"}
"""Input suffix -> output suffix for the formats a label map keeps. A MetaImage or NRRD
header with a separate data file (.mhd, .nhdr) gets the single-file form of its format,
so an output is always one file and its write stays atomic. Everything else: ``.nii.gz``."""
LABEL_MAP_SUFFIXES = (*NIFTI_FILE_SUFFIXES, *dict.fromkeys(KEPT_FORMATS.values()), ".png")
"""The suffixes of the label maps medseg writes (and ``evaluate`` reads as predictions):
PNG is the mask of a 2D picture."""


def suffix_of(path: Path) -> str:
    """The image suffix of ``path`` (``.nii.gz`` counts as one), lower case; ``""`` if unknown."""
    name = path.name.lower()
    return next((suffix for suffix in IMAGE_SUFFIXES if name.endswith(suffix)), "")


def is_nifti_file(path: Path) -> bool:
    """Whether ``path`` names a single-file NIfTI (``.nii``, ``.nii.gz``)."""
    return suffix_of(path) in NIFTI_FILE_SUFFIXES


def read_header(path: Path) -> ImageHeader:
    """The header of the image ``path`` (file or DICOM series folder), its data checked to
    be all there, no voxel decoded; ``UnusableImageError`` saying why it cannot be used."""
    from medseg.datasets.headers import inspect_image

    return inspect_image(path)


def declared_shape(path: Path) -> tuple[int, ...] | None:
    """The spatial shape a single-file NIfTI header declares (nothing else is read); None
    for other formats and for a header that cannot be read (``read_header`` then names the
    reason)."""
    if not is_nifti_file(path):
        return None
    import nibabel as nib

    try:
        return tuple(int(size) for size in nib.load(path).shape[:3])
    except Exception:  # any unreadable header; reported by the full check that follows
        return None


@dataclass(frozen=True)
class Volume:
    """An array in file index order (x, y[, z]; trailing axes of size 1 dropped), its voxel
    spacing in mm per axis and its 4x4 voxel-to-RAS affine (ITK's LPS converted)."""

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray


def read_volume(path: Path) -> Volume:
    """Read an image or label file into a ``Volume`` whose array keeps the stored dtype
    (scaled NIfTI data comes back as floats): NIfTI with nibabel, every other format with
    the readers ``medseg predict`` loads it with (``transforms.readers.image_readers``), so
    a TIFF or PNG reference and the prediction made from its image share one grid and
    affine. Raises ``CaseError`` naming ``path`` for a non-regular file or a data file
    outside its header's folder."""
    from medseg.errors import CaseError

    path = Path(path)
    if not path.is_file():
        # A named pipe under a prediction's name would block the read forever.
        raise CaseError(f"{path}: not a regular file")
    if is_nifti_file(path):
        import nibabel

        image = nibabel.load(path)
        array = np.asanyarray(image.dataobj)
        zooms = tuple(float(z) for z in image.header.get_zooms())
        affine = np.asarray(image.affine, dtype=np.float64)
    else:
        from monai.data.utils import to_affine_nd
        from monai.transforms import LoadImage

        from medseg.datasets.headers import UnusableImageError, require_confined_data_file
        from medseg.transforms.readers import image_readers

        try:
            require_confined_data_file(path)
        except UnusableImageError as error:
            raise CaseError(f"{path}: {error}") from error
        loaded = LoadImage(reader=image_readers(), image_only=True, dtype=None)(str(path))
        array = np.asarray(loaded.array)
        zooms = tuple(float(z) for z in loaded.pixdim)
        # A 2D image's 3x3 affine becomes the 4x4 one its NIfTI prediction stores.
        affine = to_affine_nd(3, np.asarray(loaded.affine, dtype=np.float64))
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    return Volume(array, zooms[: min(array.ndim, 3)], affine)


def nifti_label_image(source: Any, labels: np.ndarray, description: str | None = None) -> Any:
    """A NIfTI image of ``labels`` (uint8, ``source``'s spatial shape in its index order)
    with the nibabel image ``source``'s header geometry as stored, intensity scaling cleared
    and ``description`` (at most 80 ASCII characters) as its ``descrip``."""
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
    ``target`` with the reference file's geometry, atomically; returns ``target``.

    PNG (``target`` ends in ``.png``): an 8-bit grey picture, rows along the second axis.
    NIfTI: the reference header's geometry fields (qform/sform, their codes, pixdim)
    are copied as stored, intensity scaling is cleared and the data type is uint8. Other
    formats: origin, spacing and direction copied by SimpleITK. ``description`` (at most 80
    ASCII characters) replaces a NIfTI header's ``descrip``.
    """
    from medseg.files import write_atomic

    labels = np.asarray(labels, dtype=np.uint8)
    if target.name.endswith(".png"):
        from PIL import Image

        picture = Image.fromarray(np.ascontiguousarray(labels.T))
        return write_atomic(target, lambda path: picture.save(path, format="PNG"))
    if is_nifti_file(target):
        import nibabel as nib

        image = nifti_label_image(nib.load(reference), labels, description)
        return write_atomic(target, lambda path: nib.save(image, path))
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(reference))
    reader.ReadImageInformation()
    written = sitk.GetImageFromArray(labels.transpose(*reversed(range(labels.ndim))))
    written.SetOrigin(reader.GetOrigin()[: labels.ndim])
    written.SetSpacing(reader.GetSpacing()[: labels.ndim])
    direction = np.reshape(reader.GetDirection(), (reader.GetDimension(),) * 2)
    written.SetDirection(direction[: labels.ndim, : labels.ndim].ravel().tolist())
    return write_atomic(target, lambda path: sitk.WriteImage(written, str(path), True))
