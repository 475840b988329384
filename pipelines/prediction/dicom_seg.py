"""DICOM SEG output: a label map written as a DICOM Segmentation of its source series.

The SEG (highdicom, binary segments) references every source image, keeps the source's
patient, study and frame of reference, and describes one segment per label table entry:
label name, SNOMED CT category and type, and display colour. Before the file is renamed
into place it is read back and checked: each segment's centroid, computed from the SEG
frames' positions and orientation in patient coordinates (LPS), must equal the one
computed from the label map and its affine within one voxel. A mismatch (a flipped axis,
slices in the wrong order) raises ``GeometryError`` and nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__
from medseg.errors import CaseError
from medseg.files import atomic_path
from medseg.pipelines.label_table import LabelEntry

SEG_SUFFIX = ".seg.dcm"
SEG_SERIES_NUMBER = 9001
# RAS+ (nibabel, medseg's affines) to LPS (DICOM patient coordinates).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


class GeometryError(CaseError):
    """A DICOM SEG whose segments do not lie where the label map puts them."""


def seg_path(output_dir: Path, case_id: str) -> Path:
    """Where the DICOM SEG of case ``case_id`` goes: ``<case_id>.seg.dcm``."""
    return Path(output_dir) / f"{case_id}{SEG_SUFFIX}"


def highdicom_available() -> bool:
    """Whether highdicom (the ``dicom`` extra) can be imported."""
    import importlib.util

    return importlib.util.find_spec("highdicom") is not None


def write_dicom_seg(
    series_folder: Path,
    labels: np.ndarray,
    affine: np.ndarray,
    table: list[LabelEntry],
    target: Path,
    *,
    algorithm: str = "medseg",
) -> Path:
    """Write ``labels`` as a DICOM SEG of the series in ``series_folder``, atomically.

    ``labels``: uint8 label map (x, y, z) on the series' grid, as medseg's readers index a
    DICOM series (column, row, slice in the series reader's slice order); ``affine``: its
    4x4 voxel-to-RAS+ matrix in mm. Each ``table`` entry becomes segment k+1, in table
    order; ``algorithm`` names the model in the SEG. Raises ``GeometryError`` when the
    read-back check fails and ``CaseError`` when the series cannot be described.
    """
    import highdicom as hd

    sources = _source_datasets(series_folder)
    frames = _segment_frames(labels, table, len(sources), series_folder)
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            _segment_description(number, entry, algorithm)
            for number, entry in enumerate(table, start=1)
        ],
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name=algorithm[:64],
        software_versions=__version__,
        device_serial_number="none",
        content_label="MEDSEG",
        content_description=f"{algorithm} prediction"[:64],
        series_description=f"{algorithm} segmentation"[:64],
        # highdicom keeps every frame of an empty map anyway, with a warning.
        omit_empty_frames=bool(frames.any()),
    )
    with atomic_path(target) as temporary:
        segmentation.save_as(temporary)
        check_geometry(hd.seg.segread(temporary), labels, affine, table, target)
    return target


def _source_datasets(series_folder: Path) -> list[Any]:
    import pydicom
    import pydicom.errors

    from medseg.datasets.headers import UnusableImageError, dicom_series_files

    try:
        files = dicom_series_files(series_folder)
        return [pydicom.dcmread(name, stop_before_pixels=True) for name in files]
    except (UnusableImageError, OSError, pydicom.errors.InvalidDicomError) as error:
        raise CaseError(f"{series_folder}: cannot read the source series ({error})") from None


def _segment_frames(
    labels: np.ndarray, table: list[LabelEntry], count: int, series_folder: Path
) -> np.ndarray:
    """(slices, rows, columns) uint8 segment numbers (0 for background) from a label map
    in (column, row, slice) order."""
    if labels.ndim != 3 or labels.shape[2] != count:
        raise CaseError(
            f"{series_folder}: label map of shape {labels.shape} does not match the series' "
            f"{count} files (DICOM SEG output needs one file per slice)"
        )
    numbers = np.zeros(256, dtype=np.uint8)
    for number, entry in enumerate(table, start=1):
        numbers[entry.value] = number
    return np.ascontiguousarray(numbers[labels].transpose(2, 1, 0))


def _segment_description(number: int, entry: LabelEntry, algorithm: str) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    def concept(code: Any) -> Any:
        return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)

    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=entry.name,
        segmented_property_category=concept(entry.category),
        segmented_property_type=concept(entry.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm[:64],
            family=codes.cid7162.ArtificialIntelligence,
            version=__version__,
        ),
        display_color=hd.color.CIELabColor.from_rgb(*entry.colour),
    )


def seg_centroids(segmentation: Any) -> dict[int, np.ndarray]:
    """Segment number -> centroid (LPS, mm) of a binary SEG's pixels, from each frame's
    ImagePositionPatient, the ImageOrientationPatient and the PixelSpacing."""
    shared = segmentation.SharedFunctionalGroupsSequence[0]
    shape = (segmentation.number_of_frames, int(segmentation.Rows), int(segmentation.Columns))
    pixels = segmentation.pixel_array.reshape(shape)
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for index, frame in enumerate(segmentation.PerFrameFunctionalGroupsSequence):
        rows, columns = np.nonzero(pixels[index])
        if not len(rows):
            continue
        orientation = _item(frame, shared, "PlaneOrientationSequence").ImageOrientationPatient
        spacing = _item(frame, shared, "PixelMeasuresSequence").PixelSpacing
        origin = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        along_row, along_column = np.array(orientation[:3], float), np.array(orientation[3:], float)
        points = (
            origin
            + np.outer(columns * float(spacing[1]), along_row)
            + np.outer(rows * float(spacing[0]), along_column)
        )
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        sums[number] = sums.get(number, 0) + points.sum(axis=0)
        counts[number] = counts.get(number, 0) + len(rows)
    return {number: sums[number] / counts[number] for number in sums}


def _item(frame: Any, shared: Any, sequence: str) -> Any:
    return getattr(frame, sequence)[0] if sequence in frame else getattr(shared, sequence)[0]


def check_geometry(
    segmentation: Any,
    labels: np.ndarray,
    affine: np.ndarray,
    table: list[LabelEntry],
    where: Path,
) -> None:
    """Raise ``GeometryError`` unless every segment of ``segmentation`` has the centroid
    of its label value in ``labels`` (via ``affine``, RAS+ mm, turned to LPS) within one
    voxel along each voxel axis, and the SEG holds exactly the non-empty values."""
    from_seg = seg_centroids(segmentation)
    to_lps = RAS_TO_LPS @ affine[:3, :3]
    for number, entry in enumerate(table, start=1):
        voxels = np.argwhere(labels == entry.value)
        if not len(voxels):
            if number in from_seg:
                raise GeometryError(f"{where}: segment {entry.name!r} is empty in the label map")
            continue
        if number not in from_seg:
            raise GeometryError(f"{where}: segment {entry.name!r} lost in the DICOM SEG")
        expected = RAS_TO_LPS @ (affine[:3, 3]) + to_lps @ voxels.mean(axis=0)
        offset = np.linalg.solve(to_lps, from_seg[number] - expected)
        if np.abs(offset).max() > 1.0:
            raise GeometryError(
                f"{where}: segment {entry.name!r} lies {np.round(offset, 1).tolist()} voxels "
                "from the label map's in the DICOM SEG (geometry mismatch; nothing written)"
            )
