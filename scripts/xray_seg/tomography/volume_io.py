"""Read and write 3D X-ray volumes as numpy arrays in (z, y, x) order, whole or slab by slab.

Formats, as ``volume_format`` names them:

    nifti   .nii .nii.gz                                     ITK
    nrrd    .nrrd                                            ITK
    mha     .mha .mhd (written as .mha)                      ITK
    dicom   folder holding one DICOM series (written as NIfTI)  ITK (GDCM)
    tiff    .tif .tiff, one 2D page per z slice              tifffile
    slices  folder of 2D .tif/.tiff/.png files, ordered by the last number in their names

Axes. Every array is (z, y, x); ITK's numpy view already is. ``VolumeMeta.spacing``
follows the array, (z, y, x). ``origin`` and ``direction`` are kept exactly as ITK
gives them, so they pass unchanged to written files: the origin is the physical
(x, y, z) position of voxel [0, 0, 0] in ITK's LPS coordinates (ITK turns NIfTI's RAS
into LPS on reading and back on writing), and the direction is ITK's 3x3 matrix
flattened row by row, whose column i is the physical direction of ITK axis i
(x, y, z), i.e. of numpy axis 2 - i.

Streaming. ``SlabReader`` reads only the slices asked for from slice folders,
multi-page TIFF, uncompressed .nii (nibabel's array proxy) and DICOM series (one
file per slice). .nii.gz, .nrrd and .mha/.mhd are NOT streamed: ITK loads them whole
on the first read (for .nii.gz its peak is about twice the volume) and slabs are cut
from that. ``SlabWriter`` keeps memory bounded for every format (see its docstring).
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import operator
import os
import re
import shutil
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import tifffile
from PIL import Image

from xray_seg.shared.atomic import atomic_path
from xray_seg.shared.folders import visible_entries
from xray_seg.shared.integrity import gzip_problem, non_finite_in_file, non_finite_message

SUPPORTED_DTYPES = tuple(
    np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
)
FILE_FORMATS = {
    ".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".mha": "mha", ".mhd": "mha",
    ".tif": "tiff", ".tiff": "tiff",
}
SLICE_SUFFIXES = (".tif", ".tiff", ".png")
_ITK_FILE_FORMATS = ("nifti", "nrrd", "mha")
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_BIGTIFF_BYTES = 2**31  # classic TIFF offsets are 32-bit, and some readers take them as signed
_PNG_MODES = {"L": "uint8", "I;16": "uint16", "I": "int32", "F": "float32"}
# ITK's component names; "long" is 64-bit on Linux and not supported.
_ITK_COMPONENTS = {
    "unsigned_char": "uint8", "char": "int8", "unsigned_short": "uint16", "short": "int16",
    "unsigned_int": "uint32", "int": "int32", "float": "float32", "double": "float64",
}
# ITK's Python wrapping has no signed-char images: int8 is read through int16 (and cast
# back) and written as int16, values unchanged.
_ITK_WRITE_DTYPES = {np.dtype("int8"): np.dtype("int16")}

_UMASK = os.umask(0)
os.umask(_UMASK)


class VolumeError(ValueError):
    """A volume that cannot be read or written; the one-line message names the file or folder."""


@dataclass
class VolumeMeta:
    """Everything about a volume except its voxels (axis conventions: see the module docstring)."""

    format: str  # 'nifti' | 'nrrd' | 'mha' | 'tiff' | 'slices' | 'dicom'
    shape: tuple[int, int, int]  # (z, y, x) of the whole volume on disk
    dtype: np.dtype
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (z, y, x); mm for medical formats
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # ITK physical (x, y, z), LPS
    direction: tuple[float, ...] = _IDENTITY  # ITK direction matrix, row-major
    source: str = ""  # path read from
    slice_names: list[str] | None = None  # 'slices': file names in z order, for mirrored outputs

    def __post_init__(self) -> None:
        # Callers pass lists, numpy scalars and ITK vectors; store plain tuples.
        self.shape = tuple(int(n) for n in self.shape)
        self.dtype = np.dtype(self.dtype)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = tuple(float(d) for d in np.ravel(self.direction))


# ---------------------------------------------------------------- errors


def _error(where: str | os.PathLike, problem: str) -> VolumeError:
    return VolumeError(f"{where}: {problem}")


def _reason(exc: BaseException) -> str:
    """One line from a library exception; ITK's span lines and start with a source location."""
    text = str(exc)
    if "ITK ERROR:" in text or "itk::ERROR:" in text:
        text = re.sub(r"^\s*\w+\(0x[0-9a-fA-F]+\):", "", re.split(r"ITK ERROR:|itk::ERROR:", text)[-1])
    text = " ".join(text.split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def _library_errors(where: str | os.PathLike, action: str) -> Iterator[None]:
    """Turn any library exception into a VolumeError naming ``where``."""
    try:
        yield
    except VolumeError:
        raise
    except Exception as e:  # every library has its own exception types; all mean "cannot"
        raise _error(where, f"cannot {action}: {_reason(e)}") from e


def _check_dtype(dtype, where: str | os.PathLike) -> np.dtype:
    """``dtype`` in native byte order if supported, else VolumeError."""
    native = None if dtype is None else np.dtype(dtype).newbyteorder("=")
    if native not in SUPPORTED_DTYPES:
        names = ", ".join(d.name for d in SUPPORTED_DTYPES)
        raise _error(where, f"unsupported data type {getattr(native, 'name', dtype)}; expected one of {names}")
    return native


def _describe(shape: tuple[int, ...], dtype: np.dtype) -> str:
    return f"{'x'.join(map(str, shape))} {np.dtype(dtype).name}"


# ---------------------------------------------------------------- names and formats


def _file_suffix(path: str | os.PathLike) -> str | None:
    name = Path(path).name.lower()
    return next((s for s in FILE_FORMATS if name.endswith(s)), None)


def is_volume_file(path: str | os.PathLike) -> bool:
    """A visible file whose name ends in a volume suffix (FILE_FORMATS)."""
    path = Path(path)
    return path.is_file() and not path.name.startswith(".") and _file_suffix(path) is not None


def _visible_files(folder: Path) -> list[Path]:
    """Visible files of ``folder``; a broken link or link loop among them is a VolumeError naming it."""
    return [p for p in visible_entries(folder, VolumeError) if p.is_file()]


def _is_dicom(path: Path) -> bool:
    # DICOM files start with a 128-byte preamble and "DICM"; their names often have no extension.
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def volume_format(path: str | os.PathLike) -> str:
    """'nifti', 'nrrd', 'mha', 'tiff' by suffix; a folder is 'dicom' or 'slices' by its files."""
    path = Path(path)
    if path.is_dir():
        files = _visible_files(path)
        if any(_is_dicom(f) for f in files if f.suffix.lower() not in SLICE_SUFFIXES):
            return "dicom"
        if any(f.suffix.lower() in SLICE_SUFFIXES for f in files):
            return "slices"
        found = f"{len(files)} other file(s), e.g. {files[0].name}" if files else "nothing"
        raise _error(path, f"folder holds no DICOM series and no {'/'.join(SLICE_SUFFIXES)} slices (found {found})")
    suffix = _file_suffix(path)
    if suffix:
        return FILE_FORMATS[suffix]
    if not path.exists():
        raise _error(path, "does not exist")
    if path.suffix.lower() == ".dcm":
        raise _error(path, "a single DICOM file is not a volume; pass the folder that holds the series")
    raise _error(
        path, f"unsupported volume type; expected {' '.join(FILE_FORMATS)}, a DICOM series folder or a slice folder"
    )


def volume_stem(path: str | os.PathLike) -> str:
    """The name without its volume suffix: 'a.nii.gz' -> 'a'; a folder -> its name."""
    path = Path(path)
    suffix = None if path.is_dir() else _file_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def output_path(path: str | os.PathLike, out_dir: str | os.PathLike, suffix: str = "_seg") -> Path:
    """Where the result for volume ``path`` goes: OUT/<stem><suffix> in the input's format.

    Files keep their extension, except .mhd -> .mha (a single file can be renamed into
    place atomically). A slice folder gives the folder OUT/<stem><suffix>/. A DICOM series
    gives OUT/<stem><suffix>.nii.gz: writing a DICOM SEG object is out of scope, and NIfTI
    keeps the series' spacing, origin and direction.
    """
    path, out_dir = Path(path), Path(out_dir)
    fmt, stem = volume_format(path), volume_stem(path)
    if fmt == "slices":
        return out_dir / f"{stem}{suffix}"
    if fmt == "dicom":
        return out_dir / f"{stem}{suffix}.nii.gz"
    extension = path.name[-len(_file_suffix(path)):]  # keeps the input's spelling, e.g. .TIF
    return out_dir / f"{stem}{suffix}{'.mha' if extension.lower() == '.mhd' else extension}"


def check_same_shape(image_meta: VolumeMeta, label_meta: VolumeMeta) -> None:
    """VolumeError unless a label volume has its image's shape."""
    if tuple(label_meta.shape) != tuple(image_meta.shape):
        raise VolumeError(
            f"label {label_meta.source} has shape {label_meta.shape} "
            f"but image {image_meta.source} has {image_meta.shape}"
        )


def _z_range(slices, depth: int, where: str | os.PathLike) -> tuple[int, int]:
    try:
        z0, z1 = (operator.index(v) for v in slices)
    except (TypeError, ValueError):
        raise _error(where, f"slices must be a (start, stop) pair of integers, got {slices!r}") from None
    if not 0 <= z0 < z1 <= depth:
        raise _error(
            where, f"slices ({z0}, {z1}) out of range: the volume has {depth} slices, 0 <= start < stop <= {depth}"
        )
    return z0, z1


# ---------------------------------------------------------------- TIFF and slice folders


@contextlib.contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """Collect what tifffile logs as errors.

    On a broken page chain (a truncated file) tifffile logs an error and carries on
    with the pages before it, which would silently give a shorter volume.
    """
    messages: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def _open_tiff(path: Path) -> tuple[tifffile.TiffFile, list]:
    """Open a TIFF and check every page header (no pixels read): grey, supported type, data in the file."""
    with _tifffile_errors() as errors, _library_errors(path, "read TIFF"):
        tif = tifffile.TiffFile(path)
        try:
            pages = list(tif.pages)
        except BaseException:
            tif.close()
            raise
    try:
        if errors:
            raise _error(path, f"damaged TIFF (truncated?): {errors[0]}")
        if not pages:
            raise _error(path, "TIFF has no pages")
        size = tif.filehandle.size
        for i, page in enumerate(pages):
            _check_dtype(page.dtype, f"{path} page {i}")
            if page.samplesperpixel != 1 or page.ndim != 2:
                raise _error(path, f"page {i} has shape {page.shape}; expected one grey 2D image per page (no RGB)")
            end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
            if end > size:
                raise _error(path, f"truncated: page {i} needs {end} bytes but the file has {size}")
    except BaseException:
        tif.close()
        raise
    return tif, pages


def _slice_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one 2D slice file, from its header only."""
    if path.suffix.lower() == ".png":
        with _library_errors(path, "read PNG"), Image.open(path) as im:
            mode, (width, height) = im.mode, im.size
        if mode not in _PNG_MODES:
            raise _error(path, f"PNG mode {mode}; expected a grey image (mode {', '.join(_PNG_MODES)})")
        return (height, width), np.dtype(_PNG_MODES[mode])
    tif, pages = _open_tiff(path)
    tif.close()
    if len(pages) != 1:
        raise _error(path, f"has {len(pages)} pages; a slice file must hold one 2D image")
    return pages[0].shape, _check_dtype(pages[0].dtype, path)


def _read_slice(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    with _library_errors(path, "read slice"):
        if path.suffix.lower() == ".png":
            with Image.open(path) as im:
                array = np.asarray(im)
        else:
            array = tifffile.imread(path)
    if array.shape != shape or array.dtype.name != dtype.name:  # .name: any byte order
        raise _error(path, f"decoded as {_describe(array.shape, array.dtype)}, expected {_describe(shape, dtype)}")
    return array


def _short_list(numbers: list[int], limit: int = 10) -> str:
    text = ", ".join(map(str, numbers[:limit]))
    return text + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def _scan_slices(folder: Path) -> tuple[list[Path], VolumeMeta]:
    """The slice files of ``folder`` in z order and the volume's meta; checks every header."""
    files = [f for f in _visible_files(folder) if f.suffix.lower() in SLICE_SUFFIXES]
    if not files:
        raise _error(folder, f"folder holds no {'/'.join(SLICE_SUFFIXES)} slices")
    by_number: dict[int, Path] = {}
    for f in files:
        digits = re.findall(r"\d+", f.name[: -len(f.suffix)])
        if not digits:
            raise _error(f, "no number in the file name to order the slice by")
        number = int(digits[-1])
        if number in by_number:
            raise _error(folder, f"{by_number[number].name} and {f.name} both have slice number {number}")
        by_number[number] = f
    numbers = sorted(by_number)
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        gaps = f"slices {numbers[0]}..{numbers[-1]} have gaps: number(s) {_short_list(missing)} missing"
        raise _error(folder, gaps)
    files = [by_number[n] for n in numbers]
    headers = [_slice_header(f) for f in files]
    # The commonest size is the expected one, so a single odd first slice is named as odd.
    expected = Counter(headers).most_common(1)[0][0]
    odd = [f"{f.name} is {_describe(*h)}" for f, h in zip(files, headers) if h != expected]
    if odd:
        raise _error(
            folder,
            f"{len(odd)} slice(s) differ from the other {len(files) - len(odd)} ({_describe(*expected)}): "
            + "; ".join(odd[:5]) + ("; ..." if len(odd) > 5 else ""),
        )
    meta = VolumeMeta(
        "slices", (len(files), *expected[0]), expected[1], source=str(folder), slice_names=[f.name for f in files]
    )
    return files, meta


def _write_slice(path: Path, image: np.ndarray) -> None:
    if path.suffix.lower() == ".png":
        Image.fromarray(image).save(path)
    else:
        tifffile.imwrite(path, image, photometric="minisblack")


def _replace_folder(new: Path, final: Path) -> None:
    """Rename folder ``new`` to ``final``; an existing ``final`` is moved aside first, then deleted.

    os.replace cannot replace a non-empty folder, so for a moment ``final`` is absent,
    but readers never see a half-written one.
    """
    if final.exists():
        old = new.with_name(new.name + ".old")
        os.replace(final, old)
        os.replace(new, final)
        shutil.rmtree(old)
    else:
        os.replace(new, final)


# ---------------------------------------------------------------- ITK


def _itk():
    import itk  # imported on first use: loading ITK takes about a second

    return itk


def _itk_image_type(dtype: np.dtype):
    itk = _itk()
    pixel = {
        "uint8": itk.UC, "int8": itk.SS, "uint16": itk.US, "int16": itk.SS,
        "uint32": itk.UI, "int32": itk.SI, "float32": itk.F, "float64": itk.D,
    }[np.dtype(dtype).name]
    return itk.Image[pixel, 3]


def _itk_header(path: Path):
    """ITK's ImageIO for ``path`` with its header read, and the voxel dtype; checks it is a grey 3D volume."""
    itk = _itk()
    with _library_errors(path, "read header"):
        io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
        if io is None:
            raise _error(path, "ITK cannot read this file (damaged, or not the format its name says)")
        io.SetFileName(str(path))
        io.ReadImageInformation()
    sizes = [io.GetDimensions(i) for i in range(io.GetNumberOfDimensions())]
    if any(n != 1 for n in sizes[3:]):  # ITK would silently read only the first volume
        raise _error(path, f"is {len(sizes)}D, size {'x'.join(map(str, sizes))} (x, y, z, ...); expected a 3D volume")
    if io.GetNumberOfComponents() != 1:
        raise _error(
            path,
            f"has {io.GetNumberOfComponents()} components per voxel ({io.GetPixelTypeAsString(io.GetPixelType())}); "
            "expected a grey volume",
        )
    component = io.GetComponentTypeAsString(io.GetComponentType())
    if component not in _ITK_COMPONENTS:
        raise _error(path, f"unsupported voxel type {component}; expected one of {', '.join(_ITK_COMPONENTS)}")
    return io, np.dtype(_ITK_COMPONENTS[component])


def _itk_meta(fmt: str, image, source: Path, dtype: np.dtype) -> VolumeMeta:
    itk = _itk()
    return VolumeMeta(
        format=fmt,
        shape=tuple(image.GetLargestPossibleRegion().GetSize())[::-1],  # ITK sizes are (x, y, z)
        dtype=dtype,
        spacing=tuple(image.GetSpacing())[::-1],
        origin=tuple(image.GetOrigin()),
        direction=tuple(itk.array_from_matrix(image.GetDirection()).ravel()),
        source=str(source),
    )


def _itk_read(reader, dtype: np.dtype, where: Path) -> np.ndarray:
    itk = _itk()
    with _library_errors(where, "read voxels"):
        reader.Update()
        # No copy of ITK's buffer. ITK's view keeps the image alive, but numpy arrays made
        # from it skip it in their chain of bases (a use-after-free); a memoryview between
        # them stays in the chain.
        array = np.asarray(memoryview(itk.array_view_from_image(reader.GetOutput())))
    return array.astype(dtype, copy=False)  # int8 comes through int16


def _itk_file(path: Path, fmt: str):
    """An ITK reader for a NIfTI/NRRD/MetaImage file, with the volume's meta (header only)."""
    io, dtype = _itk_header(path)
    reader = _itk().ImageFileReader[_itk_image_type(dtype)].New(FileName=str(path), ImageIO=io)
    with _library_errors(path, "read header"):
        reader.UpdateOutputInformation()  # geometry as ITK will give it with the voxels; reads no voxels
    return reader, _itk_meta(fmt, reader.GetOutput(), path, dtype)


def _dicom_series(folder: Path) -> tuple[list[str], VolumeMeta]:
    """The files of the one DICOM series in ``folder``, in ITK's z order, and its meta (headers only)."""
    itk = _itk()
    with _library_errors(folder, "list the DICOM series"):
        names = itk.GDCMSeriesFileNames.New()
        names.SetUseSeriesDetails(True)  # split series that share a UID but differ in size or orientation
        names.AddSeriesRestriction("0008|0021")  # and by series date, as itk.imread does
        names.SetDirectory(str(folder))
        uids = list(names.GetSeriesUIDs())
        if not uids:
            raise _error(folder, "no readable DICOM images")
        if len(uids) > 1:
            raise _error(folder, f"holds {len(uids)} DICOM series; put each series in its own folder")
        files = [str(f) for f in names.GetFileNames(uids[0])]  # sorted along the slice normal
    # GDCM leaves out, with at most a warning, files it cannot parse: a damaged slice
    # would silently give a volume one slice thinner.
    outside = sorted({p.name for p in _visible_files(folder)} - {Path(f).name for f in files})
    if outside:
        raise _error(folder, f"{len(outside)} of {len(outside) + len(files)} files are not readable slices of the "
                              f"DICOM series: {', '.join(outside[:5])}{' ...' if len(outside) > 5 else ''} "
                              "(damaged, or not DICOM: remove them or repair the series)")
    _, dtype = _itk_header(Path(files[0]))
    reader = _dicom_reader(files, dtype)
    with _library_errors(folder, "read the DICOM series"):
        reader.UpdateOutputInformation()  # spacing from the slice positions; reads headers only
    return files, _itk_meta("dicom", reader.GetOutput(), folder, dtype)


def _dicom_reader(files: list[str], dtype: np.dtype):
    # A fixed pixel type: ITK would otherwise pick it from the first file of each subset.
    return _itk().ImageSeriesReader[_itk_image_type(dtype)].New(FileNames=files)


def _itk_write(array: np.ndarray, meta: VolumeMeta, filename: Path) -> None:
    """Write ``array`` through ITK with meta's spacing, origin and direction (format from the name)."""
    itk = _itk()
    array = np.ascontiguousarray(array, dtype=_ITK_WRITE_DTYPES.get(array.dtype, array.dtype))
    image = itk.image_view_from_array(array)  # no copy, also for a memmap
    image.SetSpacing([float(s) for s in meta.spacing[::-1]])
    image.SetOrigin([float(o) for o in meta.origin])
    image.SetDirection(itk.matrix_from_array(np.reshape(np.asarray(meta.direction, dtype=np.float64), (3, 3))))
    itk.imwrite(image, str(filename))


def _nifti_header(meta: VolumeMeta, dtype: np.dtype):
    """A single-file NIfTI-1 header carrying meta's geometry the way ITK's own writer stores it."""
    import nibabel

    header = nibabel.Nifti1Header()
    # NIfTI stores (x, y, z) with x fastest: byte for byte a C-order (z, y, x) array.
    header.set_data_shape(meta.shape[::-1])
    header.set_data_dtype(dtype)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])  # ITK works in LPS, NIfTI in RAS
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ np.reshape(meta.direction, (3, 3)) @ np.diag(meta.spacing[::-1])
    affine[:3, 3] = lps_to_ras @ np.asarray(meta.origin)
    header.set_qform(affine, code=1)  # 1 = scanner coordinates, as ITK writes both forms
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm", "sec")
    return header


# ---------------------------------------------------------------- reading


class SlabReader:
    """Read a volume slab by slab; memory does not grow with depth where the format allows.

    The constructor checks everything it can cheaply (headers of every slice file or TIFF
    page, DICOM series headers), so bad input fails before any slow work. Streamed
    (``streams`` True): slice folders, multi-page TIFF, uncompressed .nii, DICOM series.
    Not streamed: .nii.gz, .nrrd, .mha/.mhd, loaded whole on the first ``read``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise _error(self.path, "does not exist")
        fmt = volume_format(self.path)
        self._whole: np.ndarray | None = None  # the loaded volume, for formats read whole
        self._tif = None
        self.streams = True
        if fmt == "slices":
            self._files, self.meta = _scan_slices(self.path)
            self._read = self._read_slices
        elif fmt == "tiff":
            self._tif, self._pages = _open_tiff(self.path)
            first = self._pages[0]
            for i, page in enumerate(self._pages):
                if (page.shape, page.dtype) != (first.shape, first.dtype):
                    self.close()
                    odd, expected = _describe(page.shape, page.dtype), _describe(first.shape, first.dtype)
                    raise _error(self.path, f"page {i} is {odd} but page 0 is {expected}")
            shape = (len(self._pages), *first.shape)
            self.meta = VolumeMeta("tiff", shape, _check_dtype(first.dtype, self.path), source=str(self.path))
            self._read = self._read_tiff
        elif fmt == "dicom":
            self._files, self.meta = _dicom_series(self.path)
            self._read = self._read_dicom
        else:
            self._reader, self.meta = _itk_file(self.path, fmt)
            self._proxy = self._nifti_proxy() if fmt == "nifti" else None
            self.streams = self._proxy is not None
            self._read = self._read_nifti if self.streams else self._read_whole
        self.shape, self.dtype = self.meta.shape, self.meta.dtype

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices z0 (inclusive) to z1 (exclusive) as a new (z1 - z0, y, x) array."""
        z0, z1 = _z_range((z0, z1), self.shape[0], self.path)
        return self._read(z0, z1)

    def _load_whole(self) -> np.ndarray:
        if self._whole is None:
            self._whole = _itk_read(self._reader, self.dtype, self.path)
        return self._whole

    def _read_whole(self, z0: int, z1: int) -> np.ndarray:
        return self._load_whole()[z0:z1].copy()  # a copy: callers must not alter the cached volume

    def _read_slices(self, z0: int, z1: int) -> np.ndarray:
        out = np.empty((z1 - z0, *self.shape[1:]), self.dtype)
        for i, f in enumerate(self._files[z0:z1]):
            out[i] = _read_slice(f, self.shape[1:], self.dtype)
        return out

    def _read_tiff(self, z0: int, z1: int) -> np.ndarray:
        out = np.empty((z1 - z0, *self.shape[1:]), self.dtype)
        for i in range(z0, z1):
            with _library_errors(self.path, f"read page {i}"):
                out[i - z0] = self._pages[i].asarray()
        return out

    def _nifti_proxy(self):
        """nibabel's array proxy for an uncompressed .nii (None otherwise), after checking the file is whole."""
        import nibabel

        gz = self.path.name.lower().endswith(".gz")
        with _library_errors(self.path, "read NIfTI header"):
            proxy = nibabel.load(self.path).dataobj
            expected = proxy.offset + int(np.prod(proxy.shape)) * proxy.dtype.itemsize
            with open(self.path, "rb") as f:
                # gzip ends with the uncompressed size mod 2**32; a cut-off file ends mid-stream instead.
                f.seek(-4, os.SEEK_END)
                actual = int.from_bytes(f.read(4), "little") if gz else self.path.stat().st_size
        # ITK reads a cut-off NIfTI without complaint and gives zeros for the missing voxels.
        if gz and actual != expected % 2**32:
            raise _error(
                self.path, f"truncated or damaged: the gzip data should unpack to {expected} bytes, not {actual}"
            )
        if not gz and actual < expected:
            raise _error(self.path, f"truncated: header and voxels need {expected} bytes but the file has {actual}")
        # nibabel's array is ITK's reversed, (x, y, z); stream only when both agree on the shape.
        return proxy if not gz and proxy.shape == self.meta.shape[::-1] else None

    def _read_nifti(self, z0: int, z1: int) -> np.ndarray:
        with _library_errors(self.path, "read voxels"):
            # Reads only these slices' bytes; applies scl_slope/inter, as ITK does.
            slab = self._proxy[:, :, z0:z1].T
        return np.array(slab, dtype=self.dtype, order="C")  # a copy: nibabel's may be read-only

    def _read_dicom(self, z0: int, z1: int) -> np.ndarray:
        return _itk_read(_dicom_reader(self._files[z0:z1], self.dtype), self.dtype, self.path)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None
        self._whole = None

    def __enter__(self) -> SlabReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_nifti_stream(path: Path) -> None:
    """The checks ITK skips on a NIfTI file, in one pass over its bytes (one decompression):
    the gzip checksum of a .nii.gz, and non-finite voxels, which ITK's NIfTI reader turns
    into 0 without a word (a NaN-damaged volume would be segmented as if whole)."""
    import nibabel

    compressed = path.name.lower().endswith(".gz")
    try:
        header = nibabel.load(path).header
        dtype, offset = header.get_data_dtype(), int(header.get_data_offset())
    except Exception:  # an unreadable header: SlabReader names the problem
        return
    if dtype.kind != "f":
        if compressed and (problem := gzip_problem(path)):
            raise _error(path, problem)
        return
    try:
        bad = non_finite_in_file(path, offset, dtype, compressed)
    except (OSError, EOFError, zlib.error) as err:
        raise _error(path, f"damaged {'gzip data' if compressed else 'file'} ({type(err).__name__}: {err})") from None
    if bad:
        raise _error(path, non_finite_message(bad, int(np.prod(header.get_data_shape())))
                     + " (ITK would read them as 0)")


def check_volume(path: str | os.PathLike) -> SlabReader:
    """Open ``path`` as ``SlabReader`` does, after the checks it skips for speed on NIfTI
    files (``_check_nifti_stream``: about one read of the file). For up-front checks;
    the caller closes the reader."""
    path = Path(path)
    if path.is_file() and _file_suffix(path) in (".nii", ".nii.gz"):
        _check_nifti_stream(path)
    return SlabReader(path)


def whole_read_bytes(reader: SlabReader) -> int:
    """Memory a non-streamed volume takes to read (0 when it streams): ITK decompresses
    .nii.gz into a buffer beside the volume (peak about twice its size), and the
    volume then stays cached for the slabs cut from it."""
    if reader.streams:
        return 0
    nbytes = int(np.prod(reader.shape)) * reader.dtype.itemsize
    return 2 * nbytes


def read_volume(path: str | os.PathLike, slices: tuple[int, int] | None = None) -> tuple[np.ndarray, VolumeMeta]:
    """The volume at ``path`` as a (z, y, x) array and its meta.

    ``slices`` = (start, stop) reads only those z positions where the format allows
    (see SlabReader); meta.shape is still the whole volume's.
    """
    with SlabReader(path) as reader:
        z0, z1 = (0, reader.shape[0]) if slices is None else _z_range(slices, reader.shape[0], reader.path)
        if reader.streams:
            return reader.read(z0, z1), reader.meta
        whole = reader._load_whole()
        return (whole if (z0, z1) == (0, reader.shape[0]) else whole[z0:z1].copy()), reader.meta


# ---------------------------------------------------------------- writing


def _output_format(out_path: Path, meta: VolumeMeta) -> str:
    if meta.format == "slices":
        return "slices"
    suffix = _file_suffix(out_path)
    if suffix is None:
        raise _error(
            out_path, f"cannot tell the output format from the name; end it with one of {' '.join(FILE_FORMATS)}"
        )
    if suffix == ".mhd":
        raise _error(
            out_path,
            "write .mha instead: a .mhd header keeps its voxels in a second file, which cannot be renamed with it",
        )
    return FILE_FORMATS[suffix]


def _cast(array: np.ndarray, dtype: np.dtype, where: Path) -> np.ndarray:
    if array.dtype == dtype:
        return array
    if dtype.kind in "iu" and array.size:  # refuse to wrap values around silently
        lo, hi, info = array.min(), array.max(), np.iinfo(dtype)
        if lo < info.min or hi > info.max:
            raise _error(where, f"values {lo}..{hi} do not fit the output type {dtype}")
    return array.astype(dtype)


def write_volume(array: np.ndarray, meta: VolumeMeta, out_path: str | os.PathLike) -> Path:
    """Write ``array`` (shape meta.shape) atomically to ``out_path``; returns ``out_path``.

    The format comes from the name (from ``output_path``), or is a slice folder when
    meta.format is 'slices' (files named meta.slice_names). NIfTI, NRRD and MetaImage
    keep meta's spacing, origin and direction.
    """
    array, out_path = np.asarray(array), Path(out_path)
    if array.shape != meta.shape:
        source = meta.source or "its meta"
        raise _error(out_path, f"array shape {array.shape} differs from the volume shape {meta.shape} of {source}")
    dtype = _check_dtype(array.dtype, out_path)
    if _output_format(out_path, meta) in _ITK_FILE_FORMATS:
        with _library_errors(out_path, "write"), atomic_path(out_path) as tmp:
            _itk_write(array, meta, tmp)
    else:
        with SlabWriter(out_path, meta, dtype) as writer:
            writer.write(0, array)
    return out_path


class SlabWriter:
    """Write a volume slab by slab, in increasing z order; it appears at ``out_path`` only when complete.

    Memory stays bounded: slices and TIFF pages are written as they come; NIfTI is a
    header followed by the slabs' bytes (gzip-streamed for .nii.gz); NRRD and MetaImage
    go into a disk-backed memmap beside the output that ITK reads once, at close.
    On an exception (inside ``with``) or an incomplete volume nothing is left behind.
    """

    def __init__(self, out_path: str | os.PathLike, meta: VolumeMeta, dtype=np.uint8):
        self.path, self.meta = Path(out_path), meta
        self.dtype = _check_dtype(dtype, self.path)
        self.shape = tuple(meta.shape)
        self._format = _output_format(self.path, meta)
        self._next_z = 0
        self._done = False
        self._memmap = None
        self._cleanup = contextlib.ExitStack()  # temporary outputs and open files
        try:
            with _library_errors(self.path, "start writing"):
                getattr(self, f"_open_{self._format}")()
        except BaseException:
            self._abort()
            raise

    def _open_slices(self) -> None:
        names = self.meta.slice_names
        if not names or len(names) != self.shape[0]:
            names = [f"slice_{z:04d}.tif" for z in range(self.shape[0])]
        if any(n.lower().endswith(".png") for n in names) and self.dtype.name not in ("uint8", "uint16"):
            raise _error(self.path, f"PNG slices hold only uint8 or uint16, not {self.dtype.name}")
        if self.path.exists() and not self.path.is_dir():
            raise _error(self.path, "exists and is not a folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent))
        os.chmod(self._tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        self._cleanup.callback(shutil.rmtree, self._tmp, ignore_errors=True)  # a no-op once renamed
        self._names = names

    def _open_tiff(self) -> None:
        tmp = self._cleanup.enter_context(atomic_path(self.path))
        bigtiff = int(np.prod(self.shape)) * self.dtype.itemsize > _BIGTIFF_BYTES
        self._tif = self._cleanup.enter_context(tifffile.TiffWriter(tmp, bigtiff=bigtiff))

    def _open_nifti(self) -> None:
        tmp = self._cleanup.enter_context(atomic_path(self.path))
        self._file = self._cleanup.enter_context(open(tmp, "wb"))
        if self.path.name.lower().endswith(".gz"):
            gz = gzip.GzipFile(filename="", fileobj=self._file, mode="wb", compresslevel=6)  # 9, the default, is slow
            self._file = self._cleanup.enter_context(gz)
        self._disk_dtype = _ITK_WRITE_DTYPES.get(self.dtype, self.dtype)  # as ITK would write it
        _nifti_header(self.meta, self._disk_dtype).write_to(self._file)

    def _open_nrrd(self) -> None:
        self._tmp = self._cleanup.enter_context(atomic_path(self.path))
        # Beside the output rather than in /tmp: it is as large as the volume.
        raw = self._cleanup.enter_context(
            tempfile.NamedTemporaryFile(prefix=f".{self.path.name}.", suffix=".partial.raw", dir=self.path.parent)
        )
        self._memmap = np.memmap(raw.name, dtype=self.dtype, mode="w+", shape=self.shape)

    _open_mha = _open_nrrd

    def write(self, z0: int, array: np.ndarray) -> None:
        """Write slices z0 .. z0 + len(array); slabs come in increasing z order without gaps."""
        if self._done:
            raise _error(self.path, "writer is already closed")
        array = np.asarray(array)
        if z0 != self._next_z:
            raise _error(
                self.path,
                f"slab starts at z={z0} but the next slice to write is z={self._next_z}; "
                "slabs must come in order without gaps",
            )
        if array.ndim != 3 or array.shape[1:] != self.shape[1:] or z0 + len(array) > self.shape[0]:
            raise _error(
                self.path, f"slab of shape {array.shape} at z={z0} does not fit the volume shape {self.shape}"
            )
        slab = _cast(array, self.dtype, self.path)
        with _library_errors(self.path, "write"):
            if self._format == "slices":
                for i, image in enumerate(slab):
                    _write_slice(self._tmp / self._names[z0 + i], image)
            elif self._format == "tiff":
                for image in slab:  # contiguous: one series, so tifffile reads it back as (z, y, x)
                    self._tif.write(image, photometric="minisblack", contiguous=True)
            elif self._format == "nifti":
                self._file.write(np.ascontiguousarray(slab, dtype=self._disk_dtype).data)
            else:
                self._memmap[z0 : z0 + len(slab)] = slab
        self._next_z += len(slab)

    def close(self) -> None:
        """Finish and rename into place; VolumeError (and nothing saved) unless every slice was written."""
        if self._done:
            return
        if self._next_z != self.shape[0]:
            self._abort()
            raise _error(self.path, f"only {self._next_z} of {self.shape[0]} slices were written; nothing saved")
        try:
            with _library_errors(self.path, "finish writing"):
                if self._format in ("nrrd", "mha"):
                    _itk_write(self._memmap, self.meta, self._tmp)  # reads the whole memmap once
                    self._memmap = None
                elif self._format == "slices":
                    _replace_folder(self._tmp, self.path)
                self._cleanup.close()  # closes the files, then renames the temporary file into place
        except BaseException:
            self._abort()
            raise
        self._done = True

    def _abort(self) -> None:
        self._done, self._memmap = True, None
        # Passing an exception makes atomic_path delete its temporary file instead of renaming it.
        with contextlib.suppress(Exception):
            self._cleanup.__exit__(VolumeError, VolumeError("aborted"), None)

    def __enter__(self) -> SlabWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()
