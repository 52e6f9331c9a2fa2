"""Every number of the README results table, and the `eval_metrics` of configs/metadata.json, comes from the results
file under docs/results/ that its row names (the file the named command wrote)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METRIC_COLUMNS = {"accuracy": "accuracy", "ROC-AUC": "roc_auc", "sensitivity": "sensitivity",
                  "specificity": "specificity", "F1": "f1"}
NUMBER = re.compile(r"\d+\.\d+")


def results_table() -> list[dict]:
    """Rows of the first Markdown table under README's "## Results", as {header: cell}."""
    text = (ROOT / "README.md").read_text().split("\n## Results", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def resolve(source: str):
    """`docs/results/file.json#/key/key` -> that JSON value (a JSON pointer: '~1' stands for a '/' inside a key)."""
    path, _, pointer = source.strip("`").partition("#")
    value = json.loads((ROOT / path).read_text())
    for key in filter(None, pointer.split("/")):
        value = value[key.replace("~1", "/")]
    return value


def expected_numbers(stats: dict, key: str) -> list[float]:
    """What a cell must show for `key`: a plain value; mean ± std; or the estimate and its bootstrap interval."""
    value = stats[key]
    if isinstance(value, dict):
        return [value["mean"], value["std"]]
    interval = stats.get("intervals", {}).get(key)
    return [value] + ([interval["low"], interval["high"]] if interval else [])


ROWS = results_table()


def test_results_table_has_rows_with_sources():
    assert len(ROWS) >= 3
    for row in ROWS:
        assert row["source"].startswith("`docs/results/"), row


@pytest.mark.parametrize("row", ROWS, ids=[r["model"][:40] for r in ROWS])
def test_every_number_of_a_row_matches_its_results_file(row):
    stats = resolve(row["source"])
    for column, key in METRIC_COLUMNS.items():
        shown = [float(x) for x in NUMBER.findall(row[column])]
        if key not in stats:
            assert not shown, f"{column} shows {shown} but {row['source']} has no {key}"
            continue
        expected = expected_numbers(stats, key)
        assert len(shown) == len(expected), f"{column}: {row[column]!r} vs {expected}"
        for cell, value in zip(shown, expected):
            assert cell == pytest.approx(value, abs=0.0005 + 1e-9), f"{column}: {row[column]!r} vs {expected}"


def test_metadata_eval_metrics_match_the_shipped_model_results():
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    source = meta["eval_metrics"]["source"]
    stats = resolve(source)
    numeric = {k: v for k, v in meta["eval_metrics"].items() if isinstance(v, (int, float))}
    assert numeric, "metadata.json eval_metrics has no numbers"
    for key, value in numeric.items():
        assert value == pytest.approx(stats[key], abs=0.0005), key
