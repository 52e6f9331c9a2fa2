"""Late fusion of two classifiers (e.g. the CNN and the frozen-LiteMedSAM head): their P(positive) averaged per
image, compared with each model alone over seeds, on one shared validation split.

`a` and `b` are run folders of the benchmark scripts with ``{seed}`` in place of the seed
(`<run>/eval_validation/validation_predictions.csv`, `<run>/eval/test_predictions.csv`), or ``{split: predictions
CSV}`` for one seed (e.g. the evaluations of shipped models under `docs/results/`); every run must have scored the
same images (one `split_seed`). `domain` restricts both splits to the images of one domain (the CSVs' ``domain``
column, as `evaluate.json` writes it for a datalist of several domains). Per seed, each of a, b and the fusion gets
its threshold by `method` (Platt, the shipped rule) on validation. The winner is the highest mean validation
ROC-AUC over seeds (printed with the result); a paired patient bootstrap of the fusion against the better single
model (by validation) is recorded per seed on both splits, and the fusion counts as worth a second model only if its
validation gain clears that interval on every seed; test metrics at the validation thresholds are reported after,
never used for a choice.

    python scripts/benchmark_fusion.py --a "runs/bench_protocol/resnet18/max_epochs=5/seed{seed}" \
        --b "runs/benchmark_medsam/conv/seed{seed}" --seeds 0,1,2 --results_file docs/results/fusion_cnn_medsam.json
    python scripts/benchmark_fusion.py --a "{validation: <csv>, test: <csv>}" --b "{validation: <csv>, test: <csv>}" \
        --seeds 0 --domain adult --results_file ...
"""

import datetime
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.data.datalists import kermany_patient_id  # noqa: E402
from custom.evaluation.benchmark import (  # noqa: E402
    REPORTED,
    SPLITS,
    format_spread,
    parse_list,
    predictions_file,
    spread,
)
from custom.evaluation.metrics import binary_metrics, paired_bootstrap, select_threshold  # noqa: E402
from custom.evaluation.operating_point import average_predictions, read_predictions  # noqa: E402
from custom.io import write_json  # noqa: E402

RULE = "highest mean validation ROC-AUC over seeds"
GAIN_RULE = ("the fusion is worth its second model only if it wins and, on every seed, the paired bootstrap interval "
             "of its validation ROC-AUC gain over the better single model lies above 0")


def _predictions(run: str | dict, split: str, seed: int) -> Path:
    """The predictions CSV of `split` for `run`: a benchmark run folder with ``{seed}``, or ``{split: CSV path}``."""
    return Path(run[split]) if isinstance(run, dict) else predictions_file(run.format(seed=seed), split)


def _seed_study(runs: dict, seed: int, positive: str, method: str, n_boot: int, domain: str | None) -> dict:
    """Validation and test metrics of each model of `runs` ({name: run folder or {split: CSV}}) and their fusion at
    thresholds picked on validation, and the paired bootstrap of the fusion against the better single model."""
    paths = {split: [_predictions(run, split, seed) for run in runs.values()] for split in SPLITS}
    tables = {split: {name: read_predictions(path, positive, domain) for name, path in zip(runs, paths[split])}
              for split in SPLITS}
    for split in SPLITS:  # checks: same images, same labels
        tables[split]["fusion"] = average_predictions(list(tables[split].values()), paths[split])
    out = {}
    for name, validation in tables["validation"].items():
        threshold = select_threshold(validation["label"], validation["score"], method)
        out[name] = {split: {k: binary_metrics(tables[split][name]["label"], tables[split][name]["score"],
                                               threshold)[k] for k in (*REPORTED, "threshold")} for split in SPLITS}
    single = max(runs, key=lambda name: out[name]["validation"]["roc_auc"])
    out["paired_fusion_minus_best_single"] = {"single": single, **{split: paired_bootstrap(
        tables[split][single]["label"].to_numpy(), tables[split][single]["score"].to_numpy(),
        tables[split]["fusion"]["score"].to_numpy(), out[single]["validation"]["threshold"],
        out["fusion"]["validation"]["threshold"],
        tables[split][single]["file"].map(lambda f: kermany_patient_id(Path(f).name)).to_numpy(), n_boot)
        for split in SPLITS}}
    return out


def main(a: str | dict, b: str | dict, seeds="0,1,2", names="a,b", positive: str = "PNEUMONIA",
         method: str = "platt", n_boot: int = 2000, domain: str | None = None, results_file: str | None = None) -> None:
    """a, b: run folders with ``{seed}``, or ``{validation: CSV, test: CSV}`` (one seed); names: what to call them in
    the results (e.g. ``cnn,medsam``); domain: score only that domain's images (thresholds fitted on its validation
    part)."""
    seeds, names = parse_list(seeds, int), parse_list(names)
    for run in (a, b):
        if isinstance(run, dict) and (set(run) != set(SPLITS) or len(seeds) != 1):
            raise ValueError(f"{run}: prediction files need one key per split {list(SPLITS)} and a single seed")
    studies = {f"seed{seed}": _seed_study({names[0]: a, names[1]: b}, seed, positive, method, n_boot, domain)
               for seed in seeds}
    models = [*names, "fusion"]
    summary = {split: {m: {k: spread([s[m][split][k] for s in studies.values()]) for k in REPORTED} for m in models}
               for split in SPLITS}
    winner = max(models, key=lambda m: summary["validation"][m]["roc_auc"]["mean"])
    clear_gain = winner == "fusion" and all(
        s["paired_fusion_minus_best_single"]["validation"]["roc_auc"]["low"] > 0 for s in studies.values())
    write_json({"date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv]),
                "seeds": seeds, "runs": {names[0]: a, names[1]: b}, "domain": domain, "threshold_method": method,
                "rule": RULE, "winner": winner, "gain_rule": GAIN_RULE, "fusion_worth_it": clear_gain, **summary,
                "per_seed": studies}, results_file or "fusion.json")
    for split in SPLITS:
        print(f"\n{split.capitalize()} ({'decides' if split == 'validation' else 'reported, never used for a choice'}):")
        print("| model | " + " | ".join(REPORTED) + " |\n|---|" + "---|" * len(REPORTED))
        for m in models:
            print(f"| {m} | " + " | ".join(format_spread(summary[split][m][k], len(seeds)) for k in REPORTED) + " |")
        if split == "validation":
            print(f"Rule: {RULE} -> winner: {winner}")
            print(f"Rule: {GAIN_RULE} -> {'yes' if clear_gain else 'no'}")
    for seed, study in studies.items():
        paired = study["paired_fusion_minus_best_single"]
        print(f"{seed}: fusion minus {paired['single']}, ROC-AUC " + ", ".join(
            f"{split} {paired[split]['roc_auc']['difference']:+.4f} ({paired[split]['roc_auc']['low']:+.4f} to "
            f"{paired[split]['roc_auc']['high']:+.4f})" for split in SPLITS))


if __name__ == "__main__":
    fire.Fire(main)
