"""Minimal, valid DICOM writers for tests (pydicom), shared by the test modules: a radiograph, a CT series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    pixel_spacing: list[float] | None = None,
) -> Path:
    """Write 16-bit grey ``pixels`` (rows, columns) as a DX DICOM file; PixelSpacing is [row, col] mm."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientName = "Synthetic^Radiograph"
    ds.PatientID = "0"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if pixel_spacing is not None:
        ds.PixelSpacing = pixel_spacing
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    spacing=(2.5, 0.7, 0.5),
    origin=(10.0, -20.0, 30.0),
    row=(1.0, 0.0, 0.0),
    col=(0.0, 0.0, -1.0),
    rescale: tuple[float, float] | None = None,
) -> Path:
    """One CT file per z slice, without extension, named in reverse z order (ITK must sort by position)."""
    folder.mkdir(parents=True, exist_ok=True)
    normal = np.cross(row, col)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for z, plane in enumerate(volume):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID, ds.InstanceNumber = "CT", "Synthetic^Volume", "0", z + 1
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + z * spacing[0] * normal]
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.PixelSpacing = [spacing[1], spacing[2]]  # [between rows (y), between columns (x)]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = plane.dtype.itemsize * 8
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(plane.dtype.kind == "i")
        if rescale:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.PixelData = plane.tobytes()
        ds.save_as(folder / f"CT.1.2.{len(volume) - z}", enforce_file_format=True)
    return folder
