"""Tests for custom.data.transforms on the real shared data (DICOM, JPEG) and copies derived from it."""

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image
from pydicom.pixels import apply_modality_lut

from custom.data.transforms import (
    CXRDicomReader,
    CXRPILReader,
    LoadCXR,
    LoadCXRd,
    UnreadableImageError,
    dicom_to_array,
    to_single_channel,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DICOM_DIR = SHARED / "dicom_cxr"
UNCI = DICOM_DIR / "RG1_UNCI.dcm"
J2KI = DICOM_DIR / "RG1_J2KI.dcm"
KERMANY_TRAIN = SHARED / "pediatric_cxr" / "train"

pytestmark = pytest.mark.skipif(not UNCI.is_file(), reason=f"shared data not found at {SHARED}")


def corr(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def loader():
    return LoadCXR()


@pytest.fixture(scope="module")
def unci():
    return pydicom.dcmread(UNCI)


@pytest.fixture(scope="module")
def raw_pixels(unci):
    """Stored values after the modality LUT, (rows, columns), before VOI and MONOCHROME1 handling."""
    return np.asarray(apply_modality_lut(unci.pixel_array, unci), dtype=np.float64)


@pytest.fixture(scope="module")
def unci_tensor(loader):
    return loader(UNCI)


def write_copy(tmp_path: Path, name: str, **changes) -> Path:
    """A copy of RG1_UNCI.dcm with header elements changed (value None deletes the element)."""
    ds = pydicom.dcmread(UNCI)
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path)
    return path


# ---------------------------------------------------------------------------------------------------- DICOM
def test_real_dicoms_load_columns_first(loader, unci, unci_tensor):
    assert unci.PhotometricInterpretation == "MONOCHROME1"
    assert (unci.Rows, unci.Columns) == (1955, 1841)
    t = unci_tensor
    assert isinstance(t, MetaTensor)
    assert t.dtype == torch.float32
    assert tuple(t.shape) == (1, 1841, 1955)  # (C, W, H): first spatial axis = columns
    assert torch.isfinite(t).all()
    assert float(t.std()) > 0
    # the tensor is the presentation array transposed, not a reshaped or flipped one
    np.testing.assert_array_equal(t[0].numpy(), dicom_to_array(unci).T)


def test_lossy_j2k_copy_matches_uncompressed(loader, unci_tensor):
    j2k = pydicom.dcmread(J2KI, stop_before_pixels=True)
    assert j2k.file_meta.TransferSyntaxUID.is_compressed  # really exercises the JPEG 2000 decoder
    t = loader(J2KI)
    assert t.dtype == torch.float32
    assert tuple(t.shape) == (1, 1841, 1955)
    assert torch.isfinite(t).all()
    assert corr(t.numpy(), unci_tensor.numpy()) > 0.99


def test_monochrome1_is_inverted(unci, raw_pixels):
    presented = dicom_to_array(unci)
    assert presented.dtype == np.float32
    assert presented.shape == (1955, 1841)
    assert corr(presented, raw_pixels) < -0.99


def test_monochrome2_copy_is_not_inverted(tmp_path, loader, unci, raw_pixels):
    path = write_copy(tmp_path, "m2.dcm", PhotometricInterpretation="MONOCHROME2")
    m2 = loader(path)[0].numpy().T  # back to (rows, columns)
    assert corr(m2, raw_pixels) > 0.99
    # same window, only the polarity differs: MONOCHROME1 = mirror image of the MONOCHROME2 values
    m1 = dicom_to_array(unci)
    np.testing.assert_allclose(m1, m2.max() + m2.min() - m2, rtol=0, atol=1e-2)


def test_rescale_slope_intercept_applied(tmp_path, loader, unci):
    # MONOCHROME2 and no window: the output is the modality-LUT value itself
    plain = write_copy(tmp_path, "plain.dcm", PhotometricInterpretation="MONOCHROME2", WindowCenter=None,
                       WindowWidth=None)
    rescaled = write_copy(tmp_path, "rescaled.dcm", PhotometricInterpretation="MONOCHROME2", WindowCenter=None,
                          WindowWidth=None, RescaleSlope=2, RescaleIntercept=-100)
    p = loader(plain)[0].numpy()
    r = loader(rescaled)[0].numpy()
    np.testing.assert_array_equal(p, unci.pixel_array.T.astype(np.float32))
    np.testing.assert_allclose(r, 2 * p - 100, rtol=0, atol=1e-3)


@pytest.mark.parametrize("photometric, sign", [("MONOCHROME2", 1), ("MONOCHROME1", -1)])
def test_window_center_width_clips_to_window(tmp_path, loader, unci, photometric, sign):
    center, width = 12000, 4000
    # DICOM linear window: y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (y_max - y_min) + y_min, clipped to [y_min, y_max],
    # so x <= c - 0.5 - (w-1)/2 = 10000 gives y_min and x >= c - 0.5 + (w-1)/2 = 13999 gives y_max
    lo, hi = 10000, 13999
    path = write_copy(tmp_path, "win.dcm", PhotometricInterpretation=photometric, WindowCenter=center,
                      WindowWidth=width)
    out = loader(path)[0].numpy().T
    stored = unci.pixel_array.astype(np.float64)
    below, above = stored <= lo, stored >= hi
    assert below.mean() > 0.05 and above.mean() > 0.05  # the chosen window really clips this image at both ends
    assert np.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 2 ** unci.BitsStored - 1  # output range of the VOI LUT
    dark, bright = (out.min(), out.max()) if sign > 0 else (out.max(), out.min())
    assert np.all(out[below] == dark)  # everything under the window saturates at one end ...
    assert np.all(out[above] == bright)  # ... everything over it at the other
    inside = ~below & ~above
    assert np.all((out[inside] > out.min()) & (out[inside] < out.max()))
    # the whole image is a linear function of the stored value clipped into the window
    assert sign * corr(out, np.clip(stored, lo, hi)) > 0.9999


def test_dicom_without_suffix_still_read_as_dicom(tmp_path, loader, unci_tensor):
    path = tmp_path / "radiograph"  # no .dcm: detected by the DICM preamble, so MONOCHROME1 is still inverted
    shutil.copyfile(UNCI, path)
    assert CXRDicomReader().verify_suffix(path)
    t = loader(path)
    assert torch.equal(t.as_tensor(), unci_tensor.as_tensor())


# ---------------------------------------------------------------------------------------------------- JPEG / PNG / NIfTI
@pytest.fixture(scope="module")
def jpeg_path():
    path = sorted((KERMANY_TRAIN / "NORMAL").glob("*.jpeg"))[0]
    return path


@pytest.fixture(scope="module")
def jpeg_tensor(loader, jpeg_path):
    return loader(jpeg_path)


def test_rgb_jpeg_loads_single_channel(jpeg_path, jpeg_tensor):
    with Image.open(jpeg_path) as im:
        assert im.mode == "RGB"
        rgb = np.asarray(im, dtype=np.float32)  # (H, W, 3)
    t = jpeg_tensor
    assert isinstance(t, MetaTensor)
    assert t.dtype == torch.float32
    assert tuple(t.shape) == (1, rgb.shape[1], rgb.shape[0])
    # ITU-R 601 luminance, (W, H) orientation
    luminance = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    np.testing.assert_allclose(t[0].numpy(), luminance.T, rtol=0, atol=1e-3)
    assert 0 <= float(t.min()) and float(t.max()) <= 255


@pytest.fixture(scope="module")
def grey_crop(jpeg_path):
    """The JPEG's grey pixels cropped to a non-square (H=224, W=160) array, PIL orientation."""
    with Image.open(jpeg_path) as im:
        grey = np.asarray(im.convert("L"))
    assert grey.shape == (224, 224)
    return np.ascontiguousarray(grey[:, :160])


def _save_grey_png(arr, path):
    Image.fromarray(arr).save(path)


def _save_rgba_png(arr, path):
    Image.fromarray(np.dstack([arr, arr, arr, np.full_like(arr, 255)]), mode="RGBA").save(path)


def _save_png16(arr, path):
    Image.fromarray(arr.astype(np.uint16) * 257).save(path)


def _save_nifti(arr, path):
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr.T).astype(np.float32), np.eye(4)), path)  # array axes (W, H)


@pytest.mark.parametrize(
    "name, save, scale",
    [
        ("grey.png", _save_grey_png, 1),
        ("rgba.png", _save_rgba_png, 1),
        ("grey16.png", _save_png16, 257),
        ("grey.nii.gz", _save_nifti, 1),
    ],
)
def test_other_formats_match_jpeg(tmp_path, loader, grey_crop, jpeg_tensor, name, save, scale):
    path = tmp_path / name
    save(grey_crop, path)
    if name == "grey16.png":
        with Image.open(path) as im:
            assert im.mode.startswith("I")  # really a 16-bit file
    t = loader(path)
    assert t.dtype == torch.float32
    assert tuple(t.shape) == (1, 160, 224)  # (1, W, H) for W=160, H=224: a transposed reader fails here
    assert torch.isfinite(t).all()
    np.testing.assert_allclose(t[0].numpy(), grey_crop.T.astype(np.float32) * scale, rtol=0, atol=1e-2 * scale)
    # and the same radiograph as the RGB JPEG, same orientation
    reference = jpeg_tensor[0, :160, :].numpy()
    assert corr(t.numpy(), reference) > 0.999
    assert corr(t.numpy(), reference[::-1]) < 0.99  # sanity: a flipped image would not pass the check above


def _save_mode(mode):
    def save(arr, path):
        rgb = Image.fromarray(np.dstack([arr, arr // 2, 255 - arr]), mode="RGB")
        image = {"L": Image.fromarray(arr), "LA": Image.fromarray(arr).convert("LA"), "RGB": rgb,
                 "RGBA": rgb.convert("RGBA"), "P": rgb.convert("P"), "I;16": Image.fromarray(arr.astype(np.uint16) * 257),
                 "1": Image.fromarray(arr).convert("1"), "CMYK": rgb.convert("CMYK")}[mode]
        image.save(path)
    return save


@pytest.mark.parametrize("mode, suffix", [("L", ".png"), ("LA", ".png"), ("RGB", ".jpg"), ("RGBA", ".png"),
                                          ("P", ".png"), ("I;16", ".png"), ("1", ".bmp"), ("CMYK", ".jpg"),
                                          ("L", ".tif")])
def test_pil_fast_path_equals_monai_load_image(tmp_path, grey_crop, mode, suffix):
    """`CXRPILReader.load` (what `LoadCXR` uses for Pillow formats) gives the tensor, dtype and metadata of MONAI's
    `LoadImage` with the same reader, for every Pillow mode a radiograph comes in; the real Kermany JPEG too."""
    from monai.transforms import LoadImage

    path = tmp_path / f"image{suffix}"
    _save_mode(mode)(grey_crop, path)
    reader = CXRPILReader()
    for file in (path, sorted((KERMANY_TRAIN / "PNEUMONIA").glob("*.jpeg"))[0]):
        reference = LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=None)(str(file))
        tensor, meta = reader.load(str(file))
        assert tensor.dtype == reference.dtype and torch.equal(tensor, reference.as_tensor()), file.name
        assert meta.keys() == reference.meta.keys(), file.name
        for key, value in reference.meta.items():
            same = torch.equal(torch.as_tensor(value), torch.as_tensor(meta[key])) if key == "affine" else (
                np.array_equal(value, meta[key], equal_nan=True) if isinstance(value, (np.ndarray, float)) else
                value == meta[key])
            assert same, (file.name, key, value, meta[key])


# ---------------------------------------------------------------------------------------------------- bad input
def _check_message(excinfo, path, *reasons):
    message = str(excinfo.value)
    assert str(path) in message
    assert any(reason in message.lower() for reason in reasons), message


def test_missing_file(tmp_path, loader):
    path = tmp_path / "does_not_exist.png"
    with pytest.raises(FileNotFoundError) as excinfo:
        loader(path)
    _check_message(excinfo, path, "not found")


def test_empty_file(tmp_path, loader):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(UnreadableImageError) as excinfo:
        loader(path)
    _check_message(excinfo, path, "empty")


def test_text_file_renamed_png(tmp_path, loader):
    path = tmp_path / "notes.png"
    path.write_text("patient list, not an image\n" * 20)
    with pytest.raises(UnreadableImageError) as excinfo:
        loader(path)
    _check_message(excinfo, path, "cannot read", "not a readable image")


def test_unknown_file_type_says_no_reader_could_read_it(tmp_path, loader):
    path = tmp_path / "notes.txt"
    path.write_text("patient list, not an image\n" * 20)
    with pytest.raises(UnreadableImageError) as excinfo:
        loader(path)
    _check_message(excinfo, path, "not a readable image format")


def test_jpeg_is_read_by_its_own_reader_without_trying_dicom(loader, jpeg_path, caplog):
    with caplog.at_level("INFO"):
        image = loader(jpeg_path)
    assert image.shape[0] == 1 and "unable to load" not in caplog.text


def test_truncated_jpeg(tmp_path, loader, jpeg_path):
    data = jpeg_path.read_bytes()
    path = tmp_path / "truncated.jpeg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError) as excinfo:
        loader(path)
    _check_message(excinfo, path, "truncated")


def test_dicom_without_pixel_data(tmp_path, loader):
    path = write_copy(tmp_path, "no_pixels.dcm", PixelData=None)
    assert "PixelData" not in pydicom.dcmread(path)
    with pytest.raises(UnreadableImageError) as excinfo:
        loader(path)
    _check_message(excinfo, path, "pixel data")
    with pytest.raises(ValueError, match="pixel data"):
        dicom_to_array(pydicom.dcmread(path))


def test_tiny_image(tmp_path, loader):
    path = tmp_path / "tiny.png"
    Image.fromarray(np.full((4, 4), 128, dtype=np.uint8)).save(path)
    with pytest.raises(UnreadableImageError) as excinfo:
        loader(path)
    _check_message(excinfo, path, "too small")


# ---------------------------------------------------------------------------------------------------- dict / channels
def test_loadcxrd_replaces_image_keeps_other_keys(loader, jpeg_path, jpeg_tensor):
    item = {"image": str(jpeg_path), "label": 0, "patient_id": "IM-0115"}
    out = LoadCXRd(keys="image")(item)
    assert set(out) == {"image", "label", "patient_id"}
    assert out["label"] == 0 and out["patient_id"] == "IM-0115"
    assert isinstance(out["image"], MetaTensor)
    assert torch.equal(out["image"].as_tensor(), jpeg_tensor.as_tensor())
    assert item["image"] == str(jpeg_path)  # the input dict is not modified
    with pytest.raises(KeyError):
        LoadCXRd(keys=["image", "mask"])(item)
    assert set(LoadCXRd(keys=["image", "mask"], allow_missing_keys=True)(item)) == {"image", "label", "patient_id"}


def test_to_single_channel():
    g = torch.rand(1, 5, 6)
    assert torch.equal(to_single_channel(g), g)
    assert torch.equal(to_single_channel(g[..., None]), g)  # trailing singleton axis dropped
    rgb = torch.rand(3, 5, 6)
    expected = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    torch.testing.assert_close(to_single_channel(rgb)[0], expected)
    rgba = torch.cat([rgb, torch.rand(1, 5, 6)])
    torch.testing.assert_close(to_single_channel(rgba), to_single_channel(rgb))  # alpha ignored
    grey_alpha = torch.rand(2, 5, 6)
    assert torch.equal(to_single_channel(grey_alpha), grey_alpha[:1])
    with pytest.raises(ValueError):
        to_single_channel(torch.rand(5, 5, 6))
    with pytest.raises(ValueError):
        to_single_channel(torch.rand(5, 6))
