"""Build a datalist JSON and print its split summary.

Example (from the repo root):
    python scripts/datalist.py kermany --root ../shared/data/pediatric_cxr --output datalists/kermany.json
"""

import json
import sys
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import fire  # noqa: E402

from custom.data import datalists, domains  # noqa: E402
from custom.io import write_json  # noqa: E402


def _write(datalist: dict, output: str, base_dir: str | None) -> None:
    datalists.write_datalist(datalist, output, base_dir=base_dir)
    print(json.dumps(datalists.split_summary(datalist), indent=2))


def kermany(root: str, output: str, base_dir: str | None = None, val_fraction: float = 0.15, seed: int = 0,
            scheme: str = "binary", domain: str = "pediatric", test_fraction: float = 0.0) -> None:
    """Kermany layout root/{train,val,test}/{NORMAL,PNEUMONIA}; --test_fraction carves a test split from train when
    root has no test folder."""
    _write(datalists.build_kermany(root, val_fraction, seed, scheme, domain, test_fraction), output, base_dir)


def rsna(root: str, output: str, base_dir: str | None = None, labels_csv: str | None = None,
         val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0, domain: str = "rsna") -> None:
    """RSNA Pneumonia Detection layout (stage_2_train_images/ + stage_2_train_labels.csv)."""
    _write(datalists.build_rsna(root, labels_csv, val_fraction, test_fraction, seed, domain), output, base_dir)


def covid(root: str, output: str, base_dir: str | None = None, scheme: str = "binary", class_map: dict | None = None,
          val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0, domain: str = "adult") -> None:
    """COVID-19 Radiography Database layout (class folders, optional images/ subfolders)."""
    datalist = datalists.build_covid_radiography(root, scheme, class_map, val_fraction, test_fraction, seed, domain)
    _write(datalist, output, base_dir)


def adult(root: str, pediatric_root: str, output: str, report: str, base_dir: str | None = None,
          val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
          max_bits: int = domains.NEAR_DUPLICATE_BITS) -> None:
    """Adult split of the shared adult_cxr copy (OTHER_COVID = PNEUMONIA): byte-identical files dropped, near-duplicates
    (perceptual hash within max_bits) grouped into one part, adult copies of pediatric images dropped; --report gets
    what was found and this command."""
    datalist, found = domains.build_adult_split(root, pediatric_root, val_fraction, test_fraction, seed, max_bits)
    write_json({"command": " ".join(["python scripts/datalist.py", *sys.argv[1:]]), **found}, report)
    _write(datalist, output, base_dir)


def combine(*inputs: str, output: str, base_dir: str | None = None,
            required: tuple = domains.KNOWN_DOMAINS) -> None:
    """Merge datalist JSONs (e.g. kermany + adult) into one; stops with an error naming the output if a part lacks
    a required domain, a domain has one class only, or a domain name is unknown. base_dir: for inputs and output."""
    combined = domains.combine_datalists([datalists.load_datalist(path, base_dir) for path in inputs])
    domains.check_domains(combined, output, required)
    _write(combined, output, base_dir)


def csv(csv_path: str, output: str, base_dir: str | None = None, image_dir: str | None = None,
        class_names: list | None = None, val_fraction: float = 0.15, test_fraction: float = 0.0,
        seed: int = 0) -> None:
    """Generic CSV path,label[,patient_id][,domain][,split]; image paths relative to image_dir (default CSV folder)."""
    _write(datalists.build_csv(csv_path, image_dir, class_names, val_fraction, test_fraction, seed), output, base_dir)


if __name__ == "__main__":
    fire.Fire({"kermany": kermany, "rsna": rsna, "covid": covid, "adult": adult, "combine": combine, "csv": csv})
