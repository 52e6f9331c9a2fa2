"""Bad (and awkward but valid) input files for the bad-input suite (`tests/test_bad_input.py`, `docs/bad_input.md`).

One function per class, each building its file from a real image of the shared data (a Kermany pediatric JPEG, the
real RG1_UNCI.dcm) under a given folder and returning the path. `CLASSES` lists them with what every path must do:

- ``valid=True``: a valid image in an awkward encoding; it must be read, and give the grey radiograph of the source
  (``reference(name)`` says which array, in LoadCXR's (W, H) orientation, up to a positive linear map);
- ``valid=False``: it must be rejected with one message naming the file and containing ``message``.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCE_JPEG = SHARED / "pediatric_cxr" / "test" / "NORMAL" / "IM-0001-0001.jpeg"
SOURCE_DICOM = SHARED / "dicom_cxr" / "RG1_UNCI.dcm"
BOMB_SIZE = 30000


def source_grey() -> np.ndarray:
    """The source radiograph's grey pixels, (H, W) uint8 (the JPEG is RGB with R = G = B)."""
    with Image.open(SOURCE_JPEG) as im:
        return np.asarray(im.convert("L"))


def _source_rgb() -> Image.Image:
    with Image.open(SOURCE_JPEG) as im:
        return im.convert("RGB")


# --------------------------------------------------------------------------------------------- rejected files
def truncated_jpeg(folder: Path) -> Path:
    path = folder / "truncated.jpeg"
    path.write_bytes(SOURCE_JPEG.read_bytes()[:3000])
    return path


def truncated_png(folder: Path) -> Path:
    path = folder / "truncated.png"
    Image.fromarray(source_grey()).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def zero_bytes(folder: Path) -> Path:
    path = folder / "zero_bytes.png"
    path.write_bytes(b"")
    return path


def text_file(folder: Path) -> Path:
    path = folder / "notes.txt"
    path.write_text("Patient notes: cough for three days, no fever.\n" * 20)
    return path


def html_as_jpg(folder: Path) -> Path:
    """What a browser's "save as" of an image viewer page gives: HTML under an image name."""
    path = folder / "download.jpg"
    path.write_text("<!DOCTYPE html>\n<html><head><title>chest x-ray</title></head>\n"
                    f"<body><img src=\"https://example.org/{SOURCE_JPEG.name}\"></body></html>\n")
    return path


def one_pixel(folder: Path) -> Path:
    path = folder / "one_pixel.png"
    Image.fromarray(source_grey()[112:113, 112:113]).save(path)
    return path


def decompression_bomb(folder: Path) -> Path:
    """A valid 30000 x 30000 1-bit PNG (900 megapixels; ~110 KB on disk, 900 MB as 8-bit grey once decoded), written
    chunk by chunk without ever holding the image in memory. Its first rows are the source radiograph's thresholded
    pixels, the rest black."""
    path = folder / "bomb.png"
    row_bytes = BOMB_SIZE // 8
    grey = source_grey()
    head = np.zeros((grey.shape[0], BOMB_SIZE), dtype=bool)
    head[:, : grey.shape[1]] = grey > 128
    compressor, idat = zlib.compressobj(9), []
    for row in np.packbits(head, axis=1):
        idat.append(compressor.compress(b"\0" + row.tobytes()))
    blank = b"\0" * (1 + row_bytes)
    for _ in range(BOMB_SIZE - grey.shape[0]):
        idat.append(compressor.compress(blank))
    idat.append(compressor.flush())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", BOMB_SIZE, BOMB_SIZE, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b""))
    return path


def dicom_no_pixel_data(folder: Path) -> Path:
    path = folder / "no_pixels.dcm"
    ds = pydicom.dcmread(SOURCE_DICOM)
    del ds.PixelData
    ds.save_as(path)
    return path


def _dicom_from_grey(frames: np.ndarray, photometric: str) -> pydicom.Dataset:
    """RG1_UNCI.dcm's header with the source radiograph as pixels: (frames, rows, cols) or (rows, cols) uint16,
    uncompressed, no window (so the full range is shown)."""
    ds = pydicom.dcmread(SOURCE_DICOM)
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence", "RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = frames.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames.ndim == 3:
        ds.NumberOfFrames = frames.shape[0]
    ds.PixelData = np.ascontiguousarray(frames.astype(np.uint16)).tobytes()
    return ds


def dicom_multiframe(folder: Path) -> Path:
    """Two frames: the radiograph and its mirror image (e.g. a stored cine or a two-view study in one file)."""
    path = folder / "multiframe.dcm"
    grey = source_grey().astype(np.uint16) * 257
    _dicom_from_grey(np.stack([grey, grey[:, ::-1]]), "MONOCHROME2").save_as(path)
    return path


def nifti_3d(folder: Path) -> Path:
    """A 3-D CT-like volume: the radiograph repeated over 16 slices, (W, H, D) = (224, 224, 16)."""
    import nibabel as nib

    path = folder / "volume.nii.gz"
    volume = np.repeat(source_grey().T[:, :, None].astype(np.float32), 16, axis=2)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    return path


def unreadable_permissions(folder: Path) -> Path:
    """A good JPEG with mode 000 (readable only by root, which ignores file permissions)."""
    path = folder / "no_permission.jpeg"
    path.write_bytes(SOURCE_JPEG.read_bytes())
    path.chmod(0)
    return path


# --------------------------------------------------------------------------------------------- valid variants
def png_16bit(folder: Path) -> Path:
    path = folder / "grey16.png"
    Image.fromarray(source_grey().astype(np.uint16) * 257).save(path)
    return path


def rgba_png(folder: Path) -> Path:
    path = folder / "rgba.png"
    grey = source_grey()
    Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)]), mode="RGBA").save(path)
    return path


def palette_png(folder: Path) -> Path:
    """Grey pixels stored as palette indices through a shuffled 256-entry grey palette: the indices are not the grey
    values, so a reader that returns the indices gives noise."""
    path = folder / "palette.png"
    grey = source_grey()
    order = np.random.default_rng(0).permutation(256).astype(np.uint8)  # palette entry i holds grey order[i]
    index_of = np.argsort(order).astype(np.uint8)
    im = Image.fromarray(index_of[grey], mode="L")
    im = im.convert("P")  # mode P with an identity palette, then replace the palette
    im.putpalette(np.repeat(order, 3).tolist())
    im.save(path)
    return path


def cmyk_jpeg(folder: Path) -> Path:
    path = folder / "cmyk.jpg"
    _source_rgb().convert("CMYK").save(path, quality=95)
    return path


def dicom_monochrome1(folder: Path) -> Path:
    """The radiograph stored inverted (bone dark in the stored values), as MONOCHROME1: read, it must be the upright
    radiograph again."""
    path = folder / "monochrome1.dcm"
    _dicom_from_grey(4095 - source_grey().astype(np.uint16) * 16, "MONOCHROME1").save_as(path)
    return path


@dataclass(frozen=True)
class BadInput:
    name: str
    make: Callable[[Path], Path]
    valid: bool
    message: str = ""  # rejected files: a part of the reason (lower case)
    upload: bool = True  # does the class exist for an upload to MONAI Label (the server stores its own copy)?


CLASSES = [
    BadInput("truncated_jpeg", truncated_jpeg, False, "truncated"),
    BadInput("truncated_png", truncated_png, False, "truncated"),
    BadInput("zero_bytes", zero_bytes, False, "empty file (0 bytes)"),
    BadInput("text_file", text_file, False, "not a readable image format"),
    BadInput("html_as_jpg", html_as_jpg, False, "looks like html"),
    BadInput("one_pixel", one_pixel, False, "image too small"),
    BadInput("decompression_bomb", decompression_bomb, False, "decompression bomb"),
    BadInput("dicom_no_pixel_data", dicom_no_pixel_data, False, "no pixel data"),
    BadInput("dicom_multiframe", dicom_multiframe, False, "multi-frame dicom (2 frames of 224 x 224)"),
    BadInput("nifti_3d", nifti_3d, False, "3-d volume (224 x 224 x 16)"),
    BadInput("unreadable_permissions", unreadable_permissions, False, "permission denied", upload=False),
    BadInput("png_16bit", png_16bit, True),
    BadInput("rgba_png", rgba_png, True),
    BadInput("palette_png", palette_png, True),
    BadInput("cmyk_jpeg", cmyk_jpeg, True),
    BadInput("dicom_monochrome1", dicom_monochrome1, True),
]
BY_NAME = {c.name: c for c in CLASSES}


def make_all(folder: Path, names=None) -> dict[str, Path]:
    """Builds every class (or `names`) in `folder`; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    return {c.name: c.make(folder) for c in CLASSES if names is None or c.name in names}


def reference(name: str) -> np.ndarray:
    """For a valid class: the grey image it must read as, (W, H) float64, up to a positive linear map."""
    return source_grey().T.astype(np.float64)


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
