"""Fusion by concatenated features, per domain: a linear probe on the CNN's penultimate features, on the MedSAM
head's, and on both side by side (`custom.evaluation.feature_fusion`), trained on each domain's validation part.

Per fold seed, each probe's validation scores are cross-fitted (patient-grouped stratified folds) and its threshold
is picked on them by `method`; the winner per domain is the highest mean cross-fitted validation ROC-AUC over fold
seeds (printed with the result), and the concatenation counts as worth a second model only if it wins and, on every
seed, the paired patient bootstrap of its validation ROC-AUC gain over the better single-model probe lies above 0.
Test metrics come from the probes refitted on the whole validation part, at the validation thresholds: reported,
never used for a choice. The fold seed moves only the cross-fitting (and so the thresholds); the two models are
the checkpoints given, one training seed each.

    python scripts/benchmark_feature_fusion.py --datalist_file runs/datalists/pediatric_adult.json \
        --base_dir ../shared/data --results_file docs/results/feature_fusion_shipped.json
"""

import sys
from pathlib import Path

import fire
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from custom.data.datalists import load_datalist  # noqa: E402
from custom.data.domains import check_domains  # noqa: E402
from custom.evaluation.benchmark import REPORTED, SPLITS, format_spread, parse_list, spread  # noqa: E402
from custom.evaluation.feature_fusion import (  # noqa: E402
    bundle_features,
    cross_fitted_scores,
    probe_folds,
    refitted_scores,
)
from custom.evaluation.metrics import binary_metrics, paired_bootstrap, select_threshold  # noqa: E402
from custom.evaluation.timing import run_record  # noqa: E402
from custom.evaluation.tsne import item_domain  # noqa: E402
from custom.io import file_sha256, write_json  # noqa: E402

RULE = "per domain, the highest mean cross-fitted validation ROC-AUC over fold seeds"
GAIN_RULE = ("the concatenation is worth its second model only if it wins and, on every fold seed, the paired "
             "bootstrap interval of its cross-fitted validation ROC-AUC gain over the better single-model probe lies "
             "above 0")
FUSED = "concatenated"


def _domain_study(features: dict, labels: dict, groups: dict, seeds, folds: int, inner_folds: int, method: str,
                  n_boot: int) -> dict:
    """Per fold seed: validation (cross-fitted) and test (refitted) metrics of each probe of `features`
    ({name: {split: (N, F)}}) and the paired bootstrap of the concatenation against the better single probe."""
    test_scores = {name: refitted_scores(f["validation"], labels["validation"], f["test"], inner_folds)
                   for name, f in features.items()}
    studies = {}
    for seed in seeds:
        fold_of = probe_folds(labels["validation"], groups["validation"], folds, seed)
        scores = {name: {"validation": cross_fitted_scores(f["validation"], labels["validation"], fold_of,
                                                           inner_folds), "test": test_scores[name]}
                  for name, f in features.items()}
        out = {}
        for name, score in scores.items():
            threshold = select_threshold(labels["validation"], score["validation"], method)
            out[name] = {split: {k: binary_metrics(labels[split], score[split], threshold)[k]
                                 for k in (*REPORTED, "threshold")} for split in SPLITS}
        single = max((n for n in features if n != FUSED), key=lambda n: out[n]["validation"]["roc_auc"])
        out["paired_concatenated_minus_best_single"] = {"single": single, **{split: paired_bootstrap(
            labels[split], scores[single][split], scores[FUSED][split], out[single]["validation"]["threshold"],
            out[FUSED]["validation"]["threshold"], groups[split], n_boot) for split in SPLITS}}
        studies[f"seed{seed}"] = out
    return studies


def main(datalist_file: str, base_dir: str | None = None, cnn_ckpt: str = "models/model.pt",
         cnn_configs: str = "configs/train.json", medsam_ckpt: str = "models/medsam_head.pt",
         medsam_configs: str = "configs/train.json,configs/train_medsam_frozen.json", domains: str | None = None,
         seeds="0,1,2", folds: int = 5, inner_folds: int = 5, method: str = "platt", n_boot: int = 2000,
         batch_size: int = 16, results_file: str = "feature_fusion.json", **overrides) -> None:
    """datalist_file: validation and test items with a ``domain`` field (relative paths against `base_dir`);
    cnn_* / medsam_*: the two bundle models (comma-separated config files, checkpoint); domains: comma-separated
    (default: every domain of the validation part); `overrides`: config id -> value for both models (e.g.
    ``--cache_dir``)."""
    datalist = load_datalist(datalist_file, base_dir)
    items = {split: datalist.get(split) or [] for split in SPLITS}
    names = parse_list(domains) if domains else sorted({item_domain(it) for it in items["validation"]})
    models = {"cnn": (parse_list(cnn_configs), cnn_ckpt), "medsam": (parse_list(medsam_configs), medsam_ckpt)}
    check_domains({split: [it for it in items[split] if item_domain(it) in names] for split in SPLITS}, datalist_file,
                  required=names)  # before any feature is computed
    everything = [it for split in SPLITS for it in items[split] if item_domain(it) in names]
    by_model = {name: bundle_features(REPO_ROOT, [str(REPO_ROOT / c) for c in configs], ckpt, everything,
                                      batch_size, **overrides)
                for name, (configs, ckpt) in models.items()}
    seeds = parse_list(seeds, int)
    results, left_out = {}, {}
    for domain in names:
        parts = {split: [it for it in items[split] if item_domain(it) == domain
                         and all(str(it["image"]) in f for f in by_model.values())] for split in SPLITS}
        left_out[domain] = {split: sum(item_domain(it) == domain for it in items[split]) - len(parts[split])
                            for split in SPLITS}
        check_domains(parts, datalist_file, required=[domain])
        features = {name: {split: np.stack([f[str(it["image"])] for it in parts[split]]) for split in SPLITS}
                    for name, f in by_model.items()}
        features[FUSED] = {split: np.hstack([features[name][split] for name in models]) for split in SPLITS}
        labels = {split: np.array([int(it["label"]) for it in parts[split]]) for split in SPLITS}
        groups = {split: np.array([str(it.get("patient_id", it["image"])) for it in parts[split]]) for split in SPLITS}
        studies = _domain_study(features, labels, groups, seeds, folds, inner_folds, method, n_boot)
        probes = [*models, FUSED]
        summary = {split: {p: {k: spread([s[p][split][k] for s in studies.values()]) for k in REPORTED}
                           for p in probes} for split in SPLITS}
        winner = max(probes, key=lambda p: summary["validation"][p]["roc_auc"]["mean"])
        worth = winner == FUSED and all(s["paired_concatenated_minus_best_single"]["validation"]["roc_auc"]["low"] > 0
                                        for s in studies.values())
        results[domain] = {"images": {split: len(parts[split]) for split in SPLITS},
                           "feature_dims": {p: int(features[p]["validation"].shape[1]) for p in probes},
                           "winner": winner, "concatenation_worth_it": worth, **summary, "per_seed": studies}
        print(f"\nDomain {domain} ({results[domain]['images']} images; feature dims {results[domain]['feature_dims']})")
        for split in SPLITS:
            print(f"{split} ({'cross-fitted, decides' if split == 'validation' else 'refitted, reported only'}):")
            print("| probe on | " + " | ".join(REPORTED) + " |\n|---|" + "---|" * len(REPORTED))
            for p in probes:
                cells = " | ".join(format_spread(summary[split][p][k], len(seeds)) for k in REPORTED)
                print(f"| {p} | {cells} |")
        print(f"Rule: {RULE} -> {winner}\nRule: {GAIN_RULE} -> {'yes' if worth else 'no'}")
    write_json({**run_record(), "datalist_file": datalist_file, "datalist_sha256": file_sha256(datalist_file),
                "models": {name: {"configs": configs, "ckpt": ckpt, "ckpt_sha256": file_sha256(ckpt)}
                           for name, (configs, ckpt) in models.items()},
                "seeds": seeds, "folds": folds, "inner_folds": inner_folds, "threshold_method": method,
                "rule": RULE, "gain_rule": GAIN_RULE, "left_out": left_out, "domains": results}, results_file)


if __name__ == "__main__":
    fire.Fire(main)
