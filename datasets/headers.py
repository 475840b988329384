"""What an image file's header says, read without loading its voxels, in every format medseg reads.

NIfTI and Analyze (``.nii``, ``.nii.gz``, ``.hdr``/``.img``) are read by nibabel, TIFF by
tifffile, PNG/JPEG/BMP by Pillow, and the other ITK formats (MetaImage, NRRD, DICOM files and
series folders) by SimpleITK. Shapes are spatial and in the index order medseg's readers
return (x, y[, z]: column, row, slice); affines are 4x4 in RAS+ millimetres as nibabel gives
them, so the headers of two formats compare directly. The readers in
``medseg.transforms.readers`` use the TIFF and ITK conventions defined here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import tifffile
from nibabel.openers import ImageOpener
from PIL import Image

from medseg.datasets.completeness import (
    IncompleteError,
    check_bitmap_complete,
    check_itk_complete,
    check_nifti_complete,
    check_tiff_complete,
)
from medseg.datasets.image_io import (
    BITMAP_SUFFIXES,
    NIFTI_SUFFIXES,
    TIFF_SUFFIXES,
    suffix_of,
)

logger = logging.getLogger(__name__)


# Millimetres per unit of the length units TIFF writers (ImageJ above all) put in their tags.
_MM_PER_UNIT = {
    "mm": 1.0,
    "millimeter": 1.0,
    "cm": 10.0,
    "centimeter": 10.0,
    "m": 1000.0,
    "inch": 25.4,
    "um": 1e-3,
    "µm": 1e-3,
    "\u03bcm": 1e-3,
    "micron": 1e-3,
    "micrometer": 1e-3,
    "nm": 1e-6,
    "nanometer": 1e-6,
}
_CHANNEL_AXES = "SC"


class UnusableImageError(Exception):
    """A file cannot be used as an image; ``str(error)`` says why, without the path."""


@dataclass(frozen=True)
class ImageHeader:
    """The geometry of one image file.

    ``shape``: spatial size (x, y[, z]) in voxels, ``channels``: values per voxel (3 for
    RGB, 4 for a 4D MSD scan, 1 otherwise), ``affine``: 4x4 voxel-to-RAS+ matrix in mm, or
    None for bitmaps (PNG, JPEG), which carry no geometry.
    """

    shape: tuple[int, ...]
    channels: int
    affine: np.ndarray | None


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """Silence ITK's own warnings (GDCM writes two lines on stderr for a folder without
    DICOM files) while the block runs; the previous setting is restored after it."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def is_image(path: Path) -> bool:
    """Whether ``path`` is an image medseg reads: a file with a known suffix (not the data
    half ``.img`` of an Analyze pair, nor a hidden or macOS ``._`` file), or a folder holding
    a DICOM series (scanners often write DICOM files without a suffix)."""
    if path.name.startswith("."):
        return False
    if path.is_dir():
        with quiet_itk():
            return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    return suffix_of(path) not in ("", ".img", ".img.gz")


def inspect_image(path: Path) -> ImageHeader:
    """Read the header of ``path`` and check that its data is all there.

    Reads headers only, plus the byte counts that tell a truncated file (for ``.nii.gz``
    the gzip stream is decompressed in chunks and thrown away). Raises
    ``UnusableImageError`` for a missing, unreadable or truncated file, or a NIfTI scale
    (``scl_slope``, ``scl_inter``) that readers would turn into different voxel values.
    """
    path = Path(path)
    if not path.exists():
        raise UnusableImageError("file missing")
    if not path.is_dir() and not path.is_file():
        raise UnusableImageError("not a regular file (a pipe, socket or device); refused")
    try:
        if path.is_dir():
            return _dicom_series_header(path)
        suffix = suffix_of(path)
        with path.open("rb"):
            pass  # permission and file-type errors surface here, named as such
        if suffix in NIFTI_SUFFIXES:
            return _nifti_header(path)
        if suffix in TIFF_SUFFIXES:
            return _tiff_header(path)
        if suffix in BITMAP_SUFFIXES:
            return _bitmap_header(path)
        return _itk_header(path)
    except IncompleteError as error:
        raise UnusableImageError(str(error)) from error
    except PermissionError:
        raise UnusableImageError("cannot be opened: permission denied") from None
    except IsADirectoryError:
        raise UnusableImageError("is a folder, not an image file") from None
    except FileNotFoundError as error:  # the file itself exists: a companion is missing
        missing = Path(error.filename).name if error.filename else str(error)
        raise UnusableImageError(f"data file missing ({missing})") from error
    except UnusableImageError:
        raise
    except Exception as error:
        raise UnusableImageError(f"unreadable ({_last_line(error)})") from error


def _last_line(error: Exception) -> str:
    """The last line of an error's message: SimpleITK puts the reason there, after a trace."""
    lines = str(error).strip().splitlines()
    return lines[-1].strip() if lines else type(error).__name__


def _scale(path: Path) -> tuple[float, float] | None:
    """(scl_slope, scl_inter) as stored in a NIfTI-1/2 header on disk, None for others.

    Read from the bytes because nibabel refuses some non-finite pairs outright and resets
    the header's fields of the images it does load.
    """
    header_path = path
    for data_suffix, header_suffix in ((".img.gz", ".hdr.gz"), (".img", ".hdr")):
        if path.name.lower().endswith(data_suffix):
            header_path = path.with_name(path.name[: -len(data_suffix)] + header_suffix)
            break
    with ImageOpener(str(header_path)) as handle:
        block = handle.read(540)
    for order in "<>":
        size = struct.unpack(order + "i", block[:4])[0] if len(block) >= 4 else 0
        if size == 348 and block[344:347] in (b"ni1", b"n+1"):
            return struct.unpack(order + "ff", block[112:120])
        if size == 540 and len(block) >= 192:
            return struct.unpack(order + "dd", block[176:192])
    return None


def _nifti_header(path: Path) -> ImageHeader:
    scale = _scale(path)
    if scale is not None:
        slope, inter = scale
        # nibabel writes NaN for both to mean "no scaling"; every reader agrees on that.
        # Any other non-finite value is read as no scaling by one library and applied by
        # another, or refused.
        unset = math.isnan(slope) and math.isnan(inter)
        if not unset and not (math.isfinite(slope) and math.isfinite(inter)):
            raise UnusableImageError(
                f"header scale scl_slope={slope:g}, scl_inter={inter:g} is not finite; "
                "readers disagree on the voxel values"
            )
    image = nib.load(path)
    if getattr(image, "affine", None) is None:
        raise UnusableImageError(f"not a volume ({type(image).__name__} has no affine)")
    require_usable_affine(np.asarray(image.affine, dtype=np.float64), min(len(image.shape), 3) or 1)
    _require_real(np.dtype(image.get_data_dtype()))
    check_nifti_complete(image)
    shape = tuple(int(s) for s in image.shape)
    spatial = shape[: min(len(shape), 3)]
    return ImageHeader(spatial, math.prod(shape[3:]), np.array(image.affine, dtype=np.float64))


def require_usable_affine(affine: np.ndarray, rank: int = 3) -> None:
    """Raise ``UnusableImageError`` for a voxel-to-world affine with NaN or infinite
    entries, or with a zero voxel size along one of the image's ``rank`` axes (a singular
    3D grid): no output grid can be made from it."""
    if not np.isfinite(affine).all():
        raise UnusableImageError("header affine holds NaN or infinite values")
    columns = affine[:3, :rank]
    singular = rank == 3 and abs(float(np.linalg.det(columns))) == 0.0
    if singular or (np.linalg.norm(columns, axis=0) == 0).any():
        raise UnusableImageError("header affine is singular (a zero voxel size or direction)")


def _require_real(dtype: np.dtype) -> None:
    # Readers reduce complex voxels to their real part without a word, which for MRI
    # k-space or phase data is a different image.
    if dtype.kind == "c":
        raise UnusableImageError(
            f"complex voxel type {dtype.name}; medseg segments real-valued images "
            "(convert to the magnitude first)"
        )


def tiff_axes(axes: str) -> tuple[list[int], int | None]:
    """Positions of the spatial axes in x, y[, z] order and of the channel axis (or None).

    ``axes`` is tifffile's series axes string (``"YX"``, ``"QYX"``, ``"ZYX"``, ``"YXS"``,
    ``"ZCYX"`` ...); one leading axis that is not a channel axis is the slice axis (pages of
    a stack, whatever the writer called them). Raises ``UnusableImageError`` for more than one.
    """
    channel = next((i for i, a in enumerate(axes) if a in _CHANNEL_AXES), None)
    others = [i for i, a in enumerate(axes) if a not in _CHANNEL_AXES + "YX"]
    if len(others) > 1 or "Y" not in axes or "X" not in axes:
        raise UnusableImageError(f"TIFF axes {axes!r}: expected a 2D image or one stack of slices")
    return [axes.index("X"), axes.index("Y"), *others], channel


def tiff_spacing(tif: tifffile.TiffFile) -> tuple[float, float, float]:
    """Voxel size (x, y, z) in mm of a TIFF: from its resolution tags and ImageJ metadata.

    A size the file does not state is 1: a TIFF without a unit is in pixels.
    """
    page = tif.pages.first
    imagej = tif.imagej_metadata or {}
    unit_name = str(imagej.get("unit", "")).strip().lower()
    mm_per_unit = {2: 25.4, 3: 10.0}.get(int(page.resolutionunit), _MM_PER_UNIT.get(unit_name))
    if mm_per_unit is None:
        return (1.0, 1.0, 1.0)
    x_resolution, y_resolution = page.resolution
    z_spacing = float(imagej["spacing"]) * mm_per_unit if "spacing" in imagej else 1.0
    return (
        mm_per_unit / x_resolution if x_resolution else 1.0,
        mm_per_unit / y_resolution if y_resolution else 1.0,
        z_spacing,
    )


def _tiff_header(path: Path) -> ImageHeader:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        spatial_axes, channel_axis = tiff_axes(series.axes)
        _require_real(np.dtype(series.dtype))
        check_tiff_complete(tif, path)
        shape = tuple(int(series.shape[i]) for i in spatial_axes)
        channels = 1 if channel_axis is None else int(series.shape[channel_axis])
        spacing = tiff_spacing(tif)
    return ImageHeader(shape, channels, diagonal_affine(spacing[: len(shape)]))


def diagonal_affine(spacing: Sequence[float]) -> np.ndarray:
    """A 4x4 affine scaling each axis by ``spacing`` (missing axes by 1), origin 0."""
    affine = np.eye(4)
    affine[range(len(spacing)), range(len(spacing))] = spacing
    return affine


def _bitmap_header(path: Path) -> ImageHeader:
    with Image.open(path) as image:
        shape = (int(image.width), int(image.height))
        channels = len(image.getbands())
    check_bitmap_complete(path)
    return ImageHeader(shape, channels, None)


def itk_affine(
    direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]
) -> np.ndarray:
    """The 4x4 RAS+ affine of an ITK image from its LPS direction (row-major, flat), spacing
    and origin in mm.

    ITK's world space is LPS, so the x and y rows are negated. A 2D image gets z spacing 1;
    of an image of more than 3 dimensions the first 3 are the spatial ones.
    """
    rank = len(spacing)
    spatial = min(rank, 3)
    matrix = np.asarray(direction, dtype=np.float64).reshape(rank, rank)[:spatial, :spatial]
    affine = np.eye(4)
    affine[:spatial, :spatial] = matrix @ np.diag(np.asarray(spacing[:spatial], dtype=np.float64))
    affine[:spatial, 3] = origin[:spatial]
    affine[:2] *= -1
    return affine


def _data_file_names(path: Path) -> list[str]:
    """The data files a MetaImage (``ElementDataFile``) or detached NRRD (``data file``)
    header names: one name, a LIST of them, or a printf pattern (checked as its folder)."""
    suffix = path.suffix.lower()
    if suffix not in (".mha", ".mhd", ".nhdr", ".nrrd"):
        return []
    separator = b"=" if suffix in (".mha", ".mhd") else b":"
    keys = (b"elementdatafile",) if separator == b"=" else (b"data file", b"datafile")
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
    lines = head.split(b"\n")
    for number, line in enumerate(lines):
        if separator == b":" and not line.strip():
            return []  # a NRRD header ends at its first blank line
        key, found, value = line.partition(separator)
        if not found or key.strip().lower() not in keys:
            continue
        name = value.strip().decode("utf-8", "replace")
        if name.upper() == "LOCAL":
            return []
        if name.upper().startswith("LIST"):
            return [n.strip().decode("utf-8", "replace") for n in lines[number + 1 :] if n.strip()]
        if "%" in name:
            return [str(Path(name.split()[0]).parent / "pattern")]
        return [name]
    return []


def require_confined_data_file(path: Path) -> None:
    """Refuse a header whose data file lies outside the header's folder (an absolute path,
    ``..``, or a symbolic link leading out): a crafted header could make medseg read
    ``/etc/passwd`` as voxels."""
    folder = path.parent.resolve()
    for name in _data_file_names(path):
        target = (path.parent / name).resolve()
        if Path(name).is_absolute() or not (target == folder or folder in target.parents):
            raise UnusableImageError(
                f"data file {name!r} lies outside the header's folder; refused"
            )


def _itk_header(path: Path) -> ImageHeader:
    require_confined_data_file(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if "complex" in sitk.GetPixelIDValueAsString(reader.GetPixelID()):
        raise UnusableImageError(
            f"complex voxel type ({sitk.GetPixelIDValueAsString(reader.GetPixelID())}); "
            "medseg segments real-valued images (convert to the magnitude first)"
        )
    if path.suffix.lower() == ".dcm":
        # Without pydicom, reading the one slice is the only check of its pixel data.
        sitk.ReadImage(str(path))
    else:
        check_itk_complete(path)
    return _itk_geometry(
        reader.GetSize(),
        reader.GetNumberOfComponents(),
        reader.GetDirection(),
        reader.GetSpacing(),
        reader.GetOrigin(),
    )


def _itk_geometry(
    size: Sequence[int],
    components: int,
    direction: Sequence[float],
    spacing: Sequence[float],
    origin: Sequence[float],
) -> ImageHeader:
    spatial = min(len(size), 3)
    channels = components * math.prod(size[spatial:])
    affine = itk_affine(direction, spacing, origin)
    require_usable_affine(affine, spatial)
    return ImageHeader(tuple(int(s) for s in size[:spatial]), channels, affine)


def dicom_series_files(folder: Path) -> list[str]:
    """The files of the DICOM series in ``folder``, in slice order; the series with the most
    files when there are several (a scout or a dose report beside the scan), the lowest
    series UID among equals, with a warning naming the series used.

    Raises ``UnusableImageError`` when the folder holds no DICOM series, or when the chosen
    series has a gap between slice positions (a missing slice: SimpleITK would only warn
    and stack the slices as if they were evenly spaced).
    """
    with quiet_itk():
        series = sorted(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not series:
        raise UnusableImageError("no DICOM series in the folder")
    candidates = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series]
    # The rule: most files, and among series of equal size the lowest series UID (in
    # string order), so the same folder always gives the same series.
    chosen = max(range(len(series)), key=lambda k: (len(candidates[k]), -k))
    files = list(candidates[chosen])
    if len(series) > 1:
        tied = sum(len(c) == len(files) for c in candidates) > 1
        logger.warning(
            "%s: %d DICOM series; using %s (%d files: the largest%s)",
            folder,
            len(series),
            series[chosen],
            len(files),
            ", lowest UID among equals" if tied else "",
        )
    _require_even_slices(files)
    return files


def _require_even_slices(files: Sequence[str]) -> None:
    positions = []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if not reader.HasMetaDataKey("0020|0032"):
            return  # no positions to compare (a single multi-frame file, say)
        positions.append([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
    if len(positions) < 3:
        return
    steps = np.linalg.norm(np.diff(np.asarray(positions), axis=0), axis=1)
    typical = float(np.median(steps))
    if typical > 0 and steps.max() > 1.5 * typical:
        gap = int(steps.argmax())
        raise UnusableImageError(
            f"slice gap of {steps.max():.2f} mm after {Path(files[gap]).name} where slices are "
            f"{typical:.2f} mm apart (missing slices?)"
        )


def read_dicom_series(folder: Path) -> sitk.Image:
    """The DICOM series of ``folder`` (see ``dicom_series_files``) as one SimpleITK image."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(dicom_series_files(folder))
    return reader.Execute()


def _dicom_series_header(folder: Path) -> ImageHeader:
    # SimpleITK has no header-only read of a series; reading it whole is also the only
    # check of every slice's pixel data without pydicom.
    image = read_dicom_series(folder)
    return _itk_geometry(
        image.GetSize(),
        image.GetNumberOfComponentsPerPixel(),
        image.GetDirection(),
        image.GetSpacing(),
        image.GetOrigin(),
    )


def label_values(path: Path, *, slab_bytes: int = 1 << 26) -> np.ndarray:
    """The distinct voxel values (sorted, float64) of the label file ``path``.

    NIfTI labels are read in slabs of about ``slab_bytes`` and TIFF stacks page by page, so
    memory stays bounded for any volume; other formats are read whole (label images are
    small). Raises ``UnusableImageError`` when the data cannot be read.
    """
    path = Path(path)
    try:
        return np.unique(np.concatenate(list(_label_chunks(path, slab_bytes)))).astype(np.float64)
    except UnusableImageError:
        raise
    except Exception as error:
        raise UnusableImageError(f"label data unreadable ({_last_line(error)})") from error


def _label_chunks(path: Path, slab_bytes: int) -> Iterator[np.ndarray]:
    suffix = "" if path.is_dir() else suffix_of(path)
    if suffix in NIFTI_SUFFIXES:
        # One open stream for all slabs: each reopening would decompress a .gz from its start.
        data = nib.load(path, keep_file_open=True).dataobj
        if len(data.shape) < 3:
            yield np.unique(np.asarray(data))
            return
        per_index = math.prod(data.shape[:-1]) * data.dtype.itemsize
        step = max(1, slab_bytes // max(per_index, 1))
        for start in range(0, data.shape[-1], step):
            yield np.unique(np.asarray(data[..., start : start + step]))
    elif suffix in TIFF_SUFFIXES:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                yield np.unique(page.asarray())
    elif suffix in BITMAP_SUFFIXES:
        with Image.open(path) as image:
            yield np.unique(np.asarray(image))
    else:
        image = read_dicom_series(path) if path.is_dir() else sitk.ReadImage(str(path))
        yield np.unique(sitk.GetArrayViewFromImage(image))
