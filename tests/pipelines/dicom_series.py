"""Small synthetic CT series written with pydicom, in any slice order and orientation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Rows run along x, columns tilted 30 degrees between y and z.
OBLIQUE = (1.0, 0.0, 0.0, 0.0, float(np.cos(np.pi / 6)), float(-np.sin(np.pi / 6)))


def marked_volume(rows: int, columns: int, slices: int) -> np.ndarray:
    """``(slices, rows, columns)`` int16 HU: water with a 300 HU box off every centre and
    axis, so any flip or transposition moves it."""
    volume = np.zeros((slices, rows, columns), dtype=np.int16)
    volume[1:4, 2:6, 9:14] = 300
    return volume


def write_ct_series(
    folder: Path,
    volume: np.ndarray,
    *,
    orientation: tuple[float, ...] = AXIAL,
    spacing: tuple[float, float, float] = (0.8, 0.7, 2.5),
    origin: tuple[float, float, float] = (-20.0, 30.0, 100.0),
    descending: bool = False,
    modality: str = "CT",
    series_description: str = "AX CT",
    patient_id: str = "P001",
    series_number: int = 3,
) -> list[Path]:
    """Write ``volume`` (slices, rows, columns) as one CT series into ``folder``, one file
    per slice; ``spacing`` is (row, column, slice) in mm. Slice k lies at ``origin +
    k * spacing * normal`` (normal: row direction x column direction), or at ``-k`` along
    it when ``descending`` (z falling with the slice index). Returns the files, slice k first.
    """
    folder.mkdir(parents=True, exist_ok=True)
    row_direction, column_direction = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row_direction, column_direction) * (-1 if descending else 1)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for index, pixels in enumerate(volume):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = "Test^Phantom", patient_id
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240102", "101500", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, index + 1
        ds.SeriesDescription, ds.Manufacturer = series_description, "medseg tests"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        position = np.array(origin) + index * spacing[2] * normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = [spacing[0], spacing[1]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.ascontiguousarray(pixels, dtype=np.int16).tobytes()
        path = folder / f"IM{index:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
