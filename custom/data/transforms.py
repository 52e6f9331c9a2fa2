"""Loading and intensity transforms that turn any chest radiograph file into the tensor a network expects.

Every reader here returns arrays in MONAI's PIL convention: spatial axes (W, H), i.e. the first spatial axis runs
left-right, so JPEG, PNG, DICOM and NIfTI inputs of the same radiograph give the same tensor.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import pydicom
import torch
from monai.config import KeysCollection, PathLike
from monai.data import ImageReader, MetaTensor, get_track_meta
from monai.data.image_reader import ITKReader, NibabelReader, PILReader
from monai.transforms import LoadImage, MapTransform, Transform
from monai.utils import ImageMetaKey, MetaKeys, convert_to_tensor, ensure_tuple
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
# the suffixes `LoadCXR` reads in this module's orientation: Pillow (JPEG, PNG, BMP, TIFF), NIfTI, DICOM
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", *DICOM_SUFFIXES)


class UnreadableImageError(ValueError):
    """The file exists but is no usable image: empty, corrupt, truncated, not an image format, NaN, too small, a
    decompression bomb, a multi-frame DICOM or a 3-D volume, or it cannot be opened (permissions, not a regular
    file)."""


# Pillow's own limit (it warns above it and refuses only above twice it); images above it are refused here. The
# largest digital radiographs are about 4300 x 4300 = 18 megapixels.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class CXRPILReader(PILReader):
    """`PILReader` that refuses what it cannot read faithfully, with one clear reason each, and converts the modes
    whose raw array is not the picture: palette (P/PA: indices -> colours), CMYK/YCbCr/LAB/HSV (-> RGB), 1-bit (-> L).
    L, I;16, I, F, LA, RGB and RGBA images are returned as `PILReader` returns them.

    Refused: more than `MAX_IMAGE_PIXELS` pixels (a decompression bomb: a small file that decodes to gigabytes),
    content Pillow cannot identify (HTML or text saved under an image name), truncated or corrupt image data."""

    def __init__(self, **kwargs) -> None:
        super().__init__(converter=None, **kwargs)

    def read(self, data: Sequence[PathLike] | PathLike | np.ndarray, **kwargs):
        imgs = [_open_pil(os.fspath(name), **{**self.kwargs, **kwargs}) for name in ensure_tuple(data)]
        return imgs if len(imgs) > 1 else imgs[0]

    def load(self, path: str) -> tuple[torch.Tensor, dict]:
        """One file as ``LoadImage(reader=self, image_only=True, ensure_channel_first=True, dtype=None)`` returns it,
        without its generic machinery (a third of the time on a 224 px JPEG): the (C, W, H) tensor in the file's
        dtype and the same metadata (tests/test_transforms.py holds the two equal). The tensor is a strided view of
        the decoded (H, W[, C]) array, not a copy: reduce the channels first, then make the one channel contiguous."""
        img = self.read(path)
        array = np.array(img)  # (H, W[, C]), writable (torch refuses to view Pillow's read-only buffer)
        header = {key: "none" if value is None else value for key, value in self._get_meta_dict(img).items()}
        meta = {**header, MetaKeys.SPATIAL_SHAPE: np.asarray(img.size),
                MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if array.ndim == 3 else float("nan"),
                ImageMetaKey.FILENAME_OR_OBJ: path, MetaKeys.AFFINE: torch.eye(4, dtype=torch.float64)}
        # (C, W, H): MONAI's PIL axes, as a view
        tensor = convert_to_tensor(array)
        return (tensor.permute(2, 1, 0) if tensor.ndim == 3 else tensor.T[None]), meta


_PIL_CONVERT = {"P": "RGB", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "1": "L"}


def _open_pil(path: str, **kwargs) -> Image.Image:
    try:
        img = Image.open(path, **kwargs)
    except Image.DecompressionBombError as err:
        raise UnreadableImageError(f"refused as a possible decompression bomb: {err}") from err
    except Image.UnidentifiedImageError as err:
        raise UnreadableImageError(f"not a JPEG/PNG image: Pillow cannot identify it "
                                   f"({_describe_content(path)})") from err
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        img.close()
        raise UnreadableImageError(f"refused as a possible decompression bomb: {width} x {height} = "
                                   f"{width * height / 1e6:.0f} megapixels, over the limit of "
                                   f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels")
    try:
        img.load()
    except Exception as err:  # OSError, SyntaxError, struct.error, zlib.error, EOFError, ValueError ...
        img.close()
        raise UnreadableImageError(f"truncated or corrupt image data ({type(err).__name__}: "
                                   f"{' '.join(str(err).split())[:200]})") from err
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        mode = "PA"
    if mode in _PIL_CONVERT:
        img = img.convert(_PIL_CONVERT[mode])
    return img


def _describe_content(path: str) -> str:
    """What the first bytes of a file that is no image look like, for error messages."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as err:
        return f"cannot read it: {err.strerror or err}"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        decoded = None
    if decoded is not None and "\0" not in decoded:
        shown = " ".join(decoded.split())[:40]
        kind = "HTML" if decoded.lower().startswith(("<!doctype html", "<html", "<head", "<body")) else "text"
        return f"its content looks like {kind}: {shown!r}"
    return f"it starts with bytes {head[:8].hex(' ')}"


class CXRDicomReader(ImageReader):
    """Reads a single-frame projection radiograph (CR/DX) DICOM as presented to a radiologist.

    Applies, in order: the modality LUT (RescaleSlope/Intercept), the VOI LUT or window centre/width when the file
    has one, and inversion of MONOCHROME1 so that bone is always bright. Output: float32 array (W, H).
    """

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(str(f).lower().endswith(DICOM_SUFFIXES) or _has_dicom_preamble(f) for f in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs):
        return [pydicom.dcmread(str(f), **kwargs) for f in ensure_tuple(data)]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        arrays, meta = [], {}
        for ds in img:  # a list: a pydicom Dataset is itself iterable
            arrays.append(np.ascontiguousarray(dicom_to_array(ds).T))
            meta = {
                "spatial_shape": np.asarray(arrays[-1].shape),
                "original_channel_dim": float("nan"),
                "PhotometricInterpretation": str(ds.get("PhotometricInterpretation", "")),
                "Modality": str(ds.get("Modality", "")),
                "PixelSpacing": [float(v) for v in ds.get("PixelSpacing", ds.get("ImagerPixelSpacing", [1.0, 1.0]))],
            }
        return (np.stack(arrays) if len(arrays) > 1 else arrays[0]), meta


def _has_dicom_preamble(path: PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def dicom_to_array(ds: pydicom.Dataset) -> np.ndarray:
    """Presentation pixels of a radiograph DICOM: (rows, columns) float32, higher = more attenuating."""
    if "PixelData" not in ds:
        raise UnreadableImageError("DICOM has no pixel data (PixelData element missing)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:  # which frame is "the" radiograph is not known: refuse rather than pick one
        raise UnreadableImageError(f"multi-frame DICOM ({frames} frames of {ds.get('Rows')} x {ds.get('Columns')}): "
                                   "expected a single-frame radiograph; save the frame to classify as its own file")
    pixels = ds.pixel_array
    if pixels.ndim == 3:  # RGB/YBR secondary capture
        pixels = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return pixels
    pixels = apply_modality_lut(pixels, ds)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        pixels = apply_voi_lut(pixels, ds, prefer_lut=True)
    pixels = np.asarray(pixels, dtype=np.float32)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels
    return pixels


def cxr_readers() -> list[ImageReader]:
    """Readers for `LoadImage`, lowest priority first: ITK (anything), NIfTI, PIL (JPEG/PNG/BMP), radiograph DICOM."""
    return [ITKReader(reverse_indexing=True), NibabelReader(), CXRPILReader(), CXRDicomReader()]


def to_single_channel(img: torch.Tensor) -> torch.Tensor:
    """(C, W, H[, 1...]) with C in {1, 3, 4} -> (1, W, H): RGB(A) to luminance (ITU-R 601), alpha dropped."""
    while img.ndim > 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim != 3:
        raise ValueError(f"expected a 2D image with a channel axis, got shape {tuple(img.shape)}")
    channels = img.shape[0]
    if channels == 1:
        return img
    if channels in (3, 4):
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32, device=img.device)
        return (img[:3].float() * weights[:, None, None]).sum(0, keepdim=True)
    if channels == 2:  # grey + alpha
        return img[:1]
    raise ValueError(f"unsupported number of channels: {channels}")


class LoadCXR(Transform):
    """Path -> (1, W, H) float32 `MetaTensor` from JPEG, PNG, DICOM, NIfTI or any ITK format.

    Errors always name the file: `FileNotFoundError` for a missing file, `UnreadableImageError` for a file that cannot
    be opened (permissions, a directory or FIFO), an empty file, a DICOM without pixel data, a multi-frame DICOM, a 3-D
    volume, a corrupt or truncated image, a decompression bomb, content that is no image (text, HTML) and an image
    under 8 x 8 pixels. The bad-input classes and what each gives are listed in docs/bad_input.md.
    """

    def __init__(self) -> None:
        self.readers = cxr_readers()
        # dtype None: the reader's own dtype (uint8 for most JPEG / PNG); the cast to float32 comes after the channel
        # reduction, on a quarter of the bytes (same values: every integer pixel is exact in float32)
        # image_only False: the metadata comes back whether MONAI's metadata tracking is on or off
        self.loader = LoadImage(reader=self.readers, image_only=False, ensure_channel_first=True, dtype=None)

    def __call__(self, path: PathLike) -> MetaTensor:
        image, meta = self.read(path)
        return MetaTensor(image, meta=meta)

    def read(self, path: PathLike) -> tuple[torch.Tensor, dict]:
        """(the (1, W, H) float32 image as a plain tensor, its metadata): what ``__call__`` wraps in a `MetaTensor`."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: file not found")
        if not os.path.isfile(path):
            kind = "a directory" if os.path.isdir(path) else "a FIFO, socket or device"
            raise UnreadableImageError(f"{path}: not a regular file ({kind})")
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise UnreadableImageError(f"{path}: cannot open file: {err.strerror or err}") from err
        if os.path.getsize(path) == 0:
            raise UnreadableImageError(f"{path}: empty file (0 bytes)")
        # the highest-priority reader that claims the file by its suffix or DICOM preamble; otherwise (ITK formats,
        # unknown files) LoadImage tries every reader in turn. Without this it would also try, and log, the DICOM
        # reader on every JPEG.
        reader = next((r for r in reversed(self.readers) if not isinstance(r, ITKReader) and r.verify_suffix(path)),
                      None)
        try:
            if isinstance(reader, CXRPILReader):  # JPEG, PNG, BMP, TIFF: always 2-D
                raw, meta = reader.load(path)
            else:
                img, meta = self.loader(path, reader=reader)
                spatial = tuple(img.shape[1:])
                while len(spatial) > 2 and spatial[-1] == 1:
                    spatial = spatial[:-1]
                if len(spatial) > 2:
                    raise UnreadableImageError(f"{len(spatial)}-D volume ({' x '.join(map(str, spatial))}): "
                                               "expected a 2-D radiograph")
                raw = convert_to_tensor(img, track_meta=False)  # plain tensor ops: a MetaTensor's cost a few times more
            out = to_single_channel(raw).to(torch.float32).contiguous()
        except Exception as err:  # readers raise many types; report one clear message
            raise UnreadableImageError(f"{path}: cannot read image: {_root_cause(err)}") from err
        if raw.is_floating_point() and not torch.isfinite(out).all():
            raise UnreadableImageError(f"{path}: image contains NaN or infinite values")
        if out.shape[1] < 8 or out.shape[2] < 8:
            raise UnreadableImageError(f"{path}: image too small ({tuple(out.shape[1:])} pixels)")
        return out, meta


def _root_cause(err: BaseException) -> str:
    """One line for the innermost error of a chain (LoadImage wraps each reader's error)."""
    chain = []
    while err is not None:
        chain.append(err)
        err = err.__cause__ or err.__context__
    if any("cannot find a suitable reader" in str(e) for e in chain):
        return "not a readable image format (tried DICOM, JPEG/PNG, NIfTI and ITK readers)"
    innermost = chain[-1]
    own = next((e for e in chain if isinstance(e, UnreadableImageError)), None)
    if own is not None:  # raised by this module's readers: the message is the reason
        return str(own).splitlines()[0][:400]
    return f"{type(innermost).__name__}: {str(innermost).splitlines()[0][:300]}"


class LoadCXRd(MapTransform):
    """Dictionary version of `LoadCXR`: replaces each key's path with a (1, W, H) float32 `MetaTensor`, or, while
    MONAI's metadata tracking is off (`monai.data.set_track_meta(False)`, as `custom.data.IsolatedDataset` with
    ``track_meta=False`` runs its chain), with a plain tensor and the file under ``{key}_{meta_key_postfix}``
    (``{"filename_or_obj": path, "spatial_shape": (W, H)}``, MONAI's `LoadImaged` convention; read it back with
    `source_file`)."""

    def __init__(self, keys: KeysCollection, meta_key_postfix: str = "meta_dict",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadCXR()
        self.meta_key_postfix = meta_key_postfix

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image, meta = self.loader.read(d[key])
            if get_track_meta():
                d[key] = MetaTensor(image, meta=meta)
            else:
                d[key] = image
                d[f"{key}_{self.meta_key_postfix}"] = {
                    ImageMetaKey.FILENAME_OR_OBJ: meta[ImageMetaKey.FILENAME_OR_OBJ],
                    MetaKeys.SPATIAL_SHAPE: np.asarray(meta[MetaKeys.SPATIAL_SHAPE])}
        return d


def source_file(data: Mapping[Hashable, object], key: str = "image", index: int | None = None,
                meta_key_postfix: str = "meta_dict") -> str:
    """The file that ``data[key]`` was read from: its `MetaTensor` meta, else ``data[f"{key}_{meta_key_postfix}"]``
    (`LoadCXRd` untracked), else ``data[key]`` itself when it is still a path (e.g. a cached MedSAM embedding's
    item); "" when none says. `index`: the item of a collated batch (lists of names)."""
    value = data.get(key)
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    meta = getattr(value, "meta", None) or data.get(f"{key}_{meta_key_postfix}") or {}
    name = meta.get(ImageMetaKey.FILENAME_OR_OBJ, "")
    return str(name[index] if index is not None and isinstance(name, (list, tuple)) else name)
