"""Write a label map on the exact grid and in the file type of the image it was made from."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.files import write_atomic


def output_name(case_id: str, reference: Path) -> str:
    """``<case_id>`` plus the reference's file type (NIfTI references give ``.nii.gz``)."""
    name = reference.name.lower()
    for suffix in (".mha", ".nrrd"):
        if name.endswith(suffix):
            return f"{case_id}{suffix}"
    return f"{case_id}.nii.gz"


def write_label_like(reference: Path, labels: np.ndarray, target: Path) -> Path:
    """Write ``labels`` (uint8, the reference's spatial shape in file index order) to
    ``target`` with the reference file's geometry, atomically.

    NIfTI: the reference header's affine, qform/sform and their codes are kept, intensity
    scaling is cleared and the data type is uint8. Other formats: origin, spacing and
    direction copied by SimpleITK.
    """
    labels = np.asarray(labels, dtype=np.uint8)
    if target.name.endswith((".nii", ".nii.gz")):
        source = nib.load(reference)
        header = source.header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(None, None)
        image = type(source)(labels, source.affine, header=header)
        image.set_qform(source.get_qform(), code=int(source.header["qform_code"]))
        image.set_sform(source.get_sform(), code=int(source.header["sform_code"]))
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
