"""t-SNE of image embeddings coloured by class and by domain (one PNG, two panels).

Examples (from the repo root):
    # pooled LiteMedSAM embeddings (cached under runs/embeddings) of pediatric + adult test images
    python scripts/tsne.py --dataset_dir "['../shared/data/pediatric_cxr','../shared/data/adult_cxr']" \
        --layout "['kermany','covid_radiography']" --class_map "{'NORMAL':'NORMAL','OTHER_COVID':'PNEUMONIA'}" \
        --max_per_domain 200 --output runs/eval/tsne_medsam.png
    # penultimate features (512-d) of the shipped ResNet18 for a datalist JSON
    python scripts/tsne.py --datalist datalist.json --source checkpoint --ckpt_path models/model.pt \
        --output runs/eval/tsne_cnn.png

With `--results_file`, also writes (atomically) what was plotted and, for two domains, the domain classifier's
cross-validated ROC-AUC in that feature space (`custom.evaluation.tsne.domain_separability`).
"""

import os
import sys
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import fire  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from custom.data.datalists import (  # noqa: E402
    SPLITS,
    build_covid_radiography,
    build_kermany,
    load_datalist,
)
from custom.evaluation.timing import run_record  # noqa: E402
from custom.evaluation.tsne import (  # noqa: E402
    cached_embeddings,
    domain_separability,
    item_domain,
    penultimate_features,
    tsne_plot,
)
from custom.io import write_json  # noqa: E402
from custom.medsam.embedding_cache import EmbeddingCache  # noqa: E402
from custom.medsam.encoders import build_encoder  # noqa: E402
from custom.models.trained_model import load_bundle  # noqa: E402

SOURCES = ("medsam", "checkpoint")


def _as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def gather_items(datalist=None, dataset_dir=None, layout="kermany", class_map=None, splits="test",
                 max_per_domain=None, seed: int = 0, base_dir=None) -> list[dict]:
    """Items of `splits` from datalist JSON(s) (relative image paths resolved against `base_dir`, default each
    JSON's folder) and dataset folder(s) (one `layout` each, or one for all), at most `max_per_domain` per domain
    (seeded random choice)."""
    names = splits.split(",") if isinstance(splits, str) else list(splits)
    unknown = [s for s in names if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {list(SPLITS)}")
    lists = [load_datalist(path, base_dir) for path in _as_list(datalist)]
    dirs, layouts = _as_list(dataset_dir), _as_list(layout)
    layouts = layouts * len(dirs) if len(layouts) == 1 else layouts
    if len(layouts) != len(dirs):
        raise ValueError(f"{len(dirs)} dataset_dir(s) but {len(layouts)} layouts")
    for folder, kind in zip(dirs, layouts):
        if kind == "kermany":
            lists.append(build_kermany(folder))
        elif kind == "covid_radiography":
            lists.append(build_covid_radiography(folder, class_map=class_map))
        else:
            raise ValueError(f"unknown layout {kind!r}; use kermany or covid_radiography (or a datalist JSON)")
    items = [item for data in lists for name in names for item in data.get(name) or []]
    if not items:
        raise ValueError(f"no items in splits {names}; pass --datalist or --dataset_dir")
    if max_per_domain:
        rng = np.random.default_rng(seed)
        chosen = []
        for domain in sorted({item_domain(it) for it in items}):
            members = [it for it in items if item_domain(it) == domain]
            picks = rng.choice(len(members), min(int(max_per_domain), len(members)), replace=False)
            chosen += [members[i] for i in sorted(picks)]
        items = chosen
    return items


def main(output: str = "runs/eval/tsne.png", datalist=None, dataset_dir=None, layout="kermany", class_map=None,
         splits="test", max_per_domain: int | None = None, source: str = "medsam", cache_dir: str = "runs/embeddings",
         variant: str = "lite", encoder_checkpoint: str | None = None, ckpt_path: str = "models/model.pt",
         config_file="configs/train.json", num_classes: int = 2, perplexity: float = 30.0, seed: int = 0,
         batch_size: int = 16, device: str | None = None, results_file: str | None = None,
         base_dir: str | None = None, label: str | None = None) -> None:
    """Write the t-SNE PNG `output` for the images of `splits` (comma-separated).

    source "medsam": average-pooled (256-d) MedSAM embeddings from the cache in `cache_dir` (missing ones are
    computed; variant "lite" or "vit_b" with --encoder_checkpoint). source "checkpoint": the input of the last linear
    layer of `config_file`'s ``network_def`` (``num_classes`` outputs) with the weights of `ckpt_path` (`load_bundle`),
    on images preprocessed by the config's ``preprocessing``. label: what the plot titles call the features' source
    (default: the MedSAM variant or the checkpoint's file name).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}")
    items = gather_items(datalist, dataset_dir, layout, class_map, splits, max_per_domain, seed, base_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if source == "medsam":
        cache = EmbeddingCache(cache_dir, build_encoder(variant, encoder_checkpoint))
        features, items = cached_embeddings(items, cache, batch_size, device)
        title = f"t-SNE, {label or f'MedSAM {variant}'} embeddings"
    else:
        model = load_bundle(REPO_ROOT, [os.path.abspath(f) for f in _as_list(config_file)], ckpt_path,
                            num_classes=num_classes)
        features, items = penultimate_features(model.network, items, lambda item: model.preprocessing(dict(item)),
                                               batch_size, device)
        title = f"t-SNE, {label or Path(ckpt_path).name} features"
    tsne_plot(features, items, output, perplexity, seed, title)
    domains = [item_domain(it) for it in items]
    result = {**run_record(device), "output": output, "source": source,
              "features": ckpt_path if source == "checkpoint" else f"medsam {variant}", "images": len(items),
              "feature_dim": int(features.shape[1]), "per_domain": {d: domains.count(d) for d in sorted(set(domains))}}
    if len(set(domains)) == 2:
        result["domain_classifier_roc_auc"] = round(domain_separability(features, domains, seed=seed), 4)
    print(f"{output}: {len(items)} images, {features.shape[1]}-d features, domain classifier ROC-AUC "
          f"{result.get('domain_classifier_roc_auc', 'n/a (one domain)')}")
    if results_file:
        write_json(result, results_file)


if __name__ == "__main__":
    fire.Fire(main)
