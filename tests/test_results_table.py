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


def results_tables() -> list[list[dict]]:
    """Every Markdown table under README's "## Results", each as a list of rows {header: cell}."""
    text = (ROOT / "README.md").read_text().split("\n## Results", 1)[1].split("\n## ", 1)[0]
    tables, lines = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            header = [c.strip() for c in lines[0].strip("|").split("|")]
            tables.append([dict(zip(header, (c.strip() for c in row.strip("|").split("|")))) for row in lines[2:]])
            lines = []
    return tables


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


DOMAIN_TABLE, ROWS = results_tables()  # per shipped model a column per domain; then every compared recipe
DOMAIN_METRICS = ("accuracy", "ROC-AUC", "sensitivity", "specificity")
DOMAIN_COLUMN = re.compile(r"^(?P<domain>\w+) (?P<metric>" + "|".join(map(re.escape, DOMAIN_METRICS)) + ")$")


def test_results_tables_have_rows_with_sources():
    assert len(ROWS) >= 3 and len(DOMAIN_TABLE) >= 2
    for row in ROWS + DOMAIN_TABLE:
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


def test_domain_table_has_a_column_per_domain_and_metric():
    matched = [m for c in DOMAIN_TABLE[0] if (m := DOMAIN_COLUMN.match(c))]
    domains = {m["domain"] for m in matched}
    assert domains == {"pediatric", "adult"}
    assert {m[0] for m in matched} == {f"{d} {metric}" for d in domains for metric in DOMAIN_METRICS}


@pytest.mark.parametrize("row", DOMAIN_TABLE, ids=[r["model"][:40] for r in DOMAIN_TABLE])
def test_every_domain_column_matches_the_domains_entry_of_its_results_file(row):
    """`source` names an evaluation of both domains in one run; each "<domain> <metric>" cell is that domain's entry."""
    per_domain = resolve(row["source"])["domains"]
    for column, cell in row.items():
        if match := DOMAIN_COLUMN.match(column):
            stats, key = per_domain[match["domain"]], METRIC_COLUMNS[match["metric"]]
            shown = [float(x) for x in NUMBER.findall(cell)]
            expected = expected_numbers(stats, key)
            assert shown == pytest.approx(expected, abs=0.0005 + 1e-9), f"{column}: {cell!r} vs {expected}"


def test_metadata_eval_metrics_match_the_shipped_model_results():
    """The top level of `eval_metrics` and each nested entry with its own `source` (one per further domain)."""
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    entries = [meta["eval_metrics"], *(v for v in meta["eval_metrics"].values() if isinstance(v, dict))]
    assert all("source" in entry for entry in entries) and len(entries) >= 2
    for entry in entries:
        stats = resolve(entry["source"])
        numeric = {k: v for k, v in entry.items() if isinstance(v, (int, float))}
        assert numeric, f"metadata.json eval_metrics entry {entry['source']} has no numbers"
        for key, value in numeric.items():
            assert value == pytest.approx(stats[key], abs=0.0005), (entry["source"], key)
