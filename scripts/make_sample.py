"""Builds the embedded default dataset `data/sample` (Kermany layout) from the full pediatric split: whole patients
drawn at random (seeded) per class, bytes copied unchanged. Run once; the result is committed.

    python scripts/make_sample.py --source ../shared/data/pediatric_cxr --output data/sample
"""

import os
import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.data.datalists import kermany_items  # noqa: E402

COUNTS = {"train": {"NORMAL": 90, "PNEUMONIA": 180}, "test": {"NORMAL": 30, "PNEUMONIA": 30}}


def main(source: str = "../shared/data/pediatric_cxr", output: str = "data/sample", seed: int = 20261123) -> None:
    rng = random.Random(seed)
    for split, wanted in COUNTS.items():
        by_class = defaultdict(lambda: defaultdict(list))
        for item in kermany_items(source, split):
            by_class[item["class_name"]][item["patient_id"]].append(item["image"])
        for class_name, patients in by_class.items():
            ids = sorted(patients)
            rng.shuffle(ids)
            chosen: list[str] = []
            for pid in ids:
                if len(chosen) + len(patients[pid]) <= wanted[class_name]:
                    chosen += patients[pid]
                if len(chosen) == wanted[class_name]:
                    break
            target = Path(output, split, class_name)
            target.mkdir(parents=True, exist_ok=True)
            for path in chosen:
                shutil.copyfile(path, target / os.path.basename(path))
            print(split, class_name, len(chosen))


if __name__ == "__main__":
    fire.Fire(main)
