"""Operating-point rules and the seed ensemble, from the validation and test predictions of a seed sweep
(`scripts/benchmark_cnn.py` runs: `<option_dir>/seed<N>/eval_validation/validation_predictions.csv` and
`<option_dir>/seed<N>/eval/test_predictions.csv`, all seeds on one shared validation split).

Each threshold rule (`custom.evaluation.metrics.THRESHOLD_METHODS`) is fitted on validation; rules are compared by their
cross-fitted validation accuracy (patient-grouped folds: fitted on the other folds, scored on the held-out one) and
the ensemble (mean probability of the seeds) is compared with the single models on validation ROC-AUC. Test metrics
at each validation-fitted threshold are reported after, with their spread across seeds.

    python scripts/benchmark_operating_point.py --option_dir runs/bench_protocol/resnet18/lung_mode=crop \
        --seeds 0,1,2 --results_file docs/results/operating_point.json
"""

import datetime
import sys
from pathlib import Path

import fire
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.data.datalists import kermany_patient_id  # noqa: E402
from custom.evaluation.benchmark import SPLITS, parse_list, predictions_file, spread  # noqa: E402
from custom.evaluation.metrics import (  # noqa: E402
    THRESHOLD_METHODS,
    binary_metrics,
    cross_fitted_accuracy,
    select_threshold,
)
from custom.evaluation.operating_point import mean_of_members, read_predictions  # noqa: E402
from custom.io import write_json  # noqa: E402

TEST_FIELDS = ("accuracy", "sensitivity", "specificity", "roc_auc", "threshold")


def _study(validation: pd.DataFrame, test: pd.DataFrame, target_sensitivity: float) -> dict:
    """Per rule: cross-fitted validation accuracy, the threshold fitted on all of validation, test metrics there."""
    groups = validation["file"].map(lambda f: kermany_patient_id(Path(f).name)).to_numpy()
    out = {"validation_roc_auc": binary_metrics(validation["label"], validation["score"])["roc_auc"], "rules": {}}
    for rule in THRESHOLD_METHODS:
        threshold = select_threshold(validation["label"], validation["score"], rule, target_sensitivity)
        scored = binary_metrics(test["label"], test["score"], threshold)
        out["rules"][rule] = {
            "validation_cross_fitted_accuracy": cross_fitted_accuracy(validation["label"], validation["score"], rule,
                                                                      groups, target_sensitivity=target_sensitivity),
            "test": {k: scored[k] for k in TEST_FIELDS}}
    return out


def main(option_dir: str, seeds="0,1,2", positive: str = "PNEUMONIA", target_sensitivity: float = 0.95,
         results_file: str | None = None) -> None:
    seeds = parse_list(seeds, int)
    runs = {f"seed{seed}": Path(option_dir, f"seed{seed}") for seed in seeds}
    files = {split: [predictions_file(run, split) for run in runs.values()] for split in SPLITS}
    members = {name: (read_predictions(files["validation"][i], positive), read_predictions(files["test"][i], positive))
               for i, name in enumerate(runs)}
    ensemble = (mean_of_members(files["validation"], positive), mean_of_members(files["test"], positive))
    studies = {name: _study(v, t, target_sensitivity) for name, (v, t) in {**members, "ensemble": ensemble}.items()}
    singles = [studies[f"seed{s}"] for s in seeds]
    rules = {rule: {"validation_cross_fitted_accuracy": spread([s["rules"][rule]["validation_cross_fitted_accuracy"]
                                                                   for s in singles]),
                    "test": {k: spread([s["rules"][rule]["test"][k] for s in singles]) for k in TEST_FIELDS}}
             for rule in THRESHOLD_METHODS}
    best_rule = max(THRESHOLD_METHODS, key=lambda r: rules[r]["validation_cross_fitted_accuracy"]["mean"])
    single_auc = spread([s["validation_roc_auc"] for s in singles])
    ensemble_wins = studies["ensemble"]["validation_roc_auc"] > max(s["validation_roc_auc"] for s in singles)
    summary = {
        "date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv]), "seeds": seeds,
        "rule_choice": "highest mean cross-fitted validation accuracy over seeds", "best_rule": best_rule,
        "ensemble_choice": "ensemble ships if its validation ROC-AUC beats every single seed's",
        "ensemble_wins_on_validation": bool(ensemble_wins), "single_validation_roc_auc": single_auc,
        "rules_over_seeds": rules, "members": studies}
    if results_file:
        write_json(summary, results_file)
    print("Validation (decides):")
    print("| rule | cross-fitted val accuracy (mean ± sd over seeds) | ensemble |\n|---|---|---|")
    for rule in THRESHOLD_METHODS:
        stats = rules[rule]["validation_cross_fitted_accuracy"]
        ens = studies["ensemble"]["rules"][rule]["validation_cross_fitted_accuracy"]
        print(f"| {rule} | {stats['mean']:.4f} ± {stats['std']:.4f} | {ens:.4f} |")
    print(f"Rule choice ({summary['rule_choice']}): {best_rule}")
    print(f"Validation ROC-AUC: single {single_auc['mean']:.4f} ± {single_auc['std']:.4f}, ensemble "
          f"{studies['ensemble']['validation_roc_auc']:.4f} -> ensemble {'wins' if ensemble_wins else 'does not win'}")
    print("\nTest (reported, never used for a choice):")
    print("| rule | accuracy (seeds) | sensitivity | specificity | ensemble accuracy | ensemble ROC-AUC |\n|---|---|---|---|---|---|")
    for rule in THRESHOLD_METHODS:
        test, ens = rules[rule]["test"], studies["ensemble"]["rules"][rule]["test"]
        print(f"| {rule} | {test['accuracy']['mean']:.3f} ± {test['accuracy']['std']:.3f} | "
              f"{test['sensitivity']['mean']:.3f} | {test['specificity']['mean']:.3f} | {ens['accuracy']:.3f} | "
              f"{ens['roc_auc']:.3f} |")


if __name__ == "__main__":
    fire.Fire(main)
