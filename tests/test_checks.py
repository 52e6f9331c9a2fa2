import shutil

import pytest

from custom.data import inference_items, require_readable
from custom.data.datalists import build_kermany, write_datalist
from tests.test_bundle import SAMPLE


def test_inference_items_from_folder_file_and_datalist(tmp_path):
    (tmp_path / "sub").mkdir()
    jpeg = next((SAMPLE / "test" / "NORMAL").glob("*.jpeg"))
    shutil.copy(jpeg, tmp_path / "sub" / "a.jpeg")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_text("x")
    assert sorted(it["image"] for it in inference_items(tmp_path)) == [str(tmp_path / "notes.txt"), str(tmp_path / "sub" / "a.jpeg")]
    assert inference_items(tmp_path / "sub" / "a.jpeg") == [{"image": str(tmp_path / "sub" / "a.jpeg")}]
    write_datalist(build_kermany(SAMPLE), tmp_path / "dl.json")
    items = inference_items(tmp_path / "dl.json")
    assert len(items) == 60 and all(it["image"].startswith(str(SAMPLE)) for it in items)
    with pytest.raises(FileNotFoundError, match="missing"):
        inference_items(tmp_path / "missing")


def test_require_readable_reports_bad_labels_and_files(tmp_path):
    good = next((SAMPLE / "train" / "NORMAL").glob("*.jpeg"))
    datalist = {"training": [{"image": str(good), "label": 0}, {"image": str(good), "label": 5},
                             {"image": str(tmp_path / "gone.png"), "label": 1}], "validation": []}
    with pytest.raises(ValueError) as err:
        require_readable(datalist, num_classes=2)
    assert "2 bad input(s)" in str(err.value) and "label 5 not in 0..1" in str(err.value) and "gone.png" in str(err.value)
    require_readable({"training": datalist["training"][:1], "validation": []}, num_classes=2)
