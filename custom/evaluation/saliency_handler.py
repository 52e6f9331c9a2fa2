"""Saliency maps for every image an evaluator sees, named by outcome (TP/FP/TN/FN), and a gallery of the most
confident examples per outcome."""

from __future__ import annotations

import heapq
import itertools
import logging
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from custom.data.transforms import source_file
from custom.evaluation.saliency import (
    Saliency,
    as_numpy,
    plot_saliency_gallery,
    plot_saliency_overlay,
    saliency_title,
)
from custom.models.trained_model import OperatingPoint

logger = logging.getLogger(__name__)

BINARY_OUTCOMES = ("TP", "FP", "TN", "FN")
MULTICLASS_OUTCOMES = ("correct", "incorrect")


class SaliencyHandler:
    """Attach to a `monai.engines.SupervisedEvaluator`: for each evaluated image computes the saliency of the
    predicted class with the evaluator's network and writes ``<output_dir>/saliency/<stem>_<outcome>.png``; at the
    end of the run writes ``<output_dir>/saliency_gallery.png`` (a row per outcome, `per_outcome` tiles, most
    confident first).

    The predicted class is the operating point's decision (`OperatingPoint.decide`); binary tasks name outcomes
    TP / FP / TN / FN, more classes correct / incorrect. Needs decollated outputs with "pred" = (C,) probabilities and
    "label", the network input "image" (C, W, H), and the file name: the meta data of the batch's `filename_key`
    (a MetaTensor) or its value (a path string, e.g. copied before a transform that drops meta data). Items without
    a label or a file name, or whose saliency or figure fails, are logged and skipped
    (``self.skipped``: [(file, reason)]).

    Args:
        output_dir: where ``saliency/`` and the gallery go.
        class_names: C names, index order.
        operating_point: the checkpoint's `OperatingPoint` (loaded by a CheckpointLoader before the run); None = 0.5.
        method, target_layers, fc_layers: as in `custom.evaluation.saliency.Saliency`.
        per_outcome: gallery tiles per row.
        filename_key: batch key holding the source file (a loaded MetaTensor or the path itself).
    """

    def __init__(self, output_dir: str, class_names: list[str], operating_point: OperatingPoint | None = None,
                 method: str = "gradcam", target_layers: str | None = None, fc_layers: str | None = None,
                 per_outcome: int = 4, filename_key: str = "image") -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.operating_point = operating_point or OperatingPoint()
        self.method, self.target_layers, self.fc_layers = method, target_layers, fc_layers
        self.per_outcome = per_outcome
        self.filename_key = filename_key
        self.saliency: Saliency | None = None
        self.written: list[Path] = []
        self.skipped: list[tuple[str, str]] = []
        self._reset()

    @property
    def outcomes(self) -> tuple[str, ...]:
        return BINARY_OUTCOMES if len(self.class_names) == 2 else MULTICLASS_OUTCOMES

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def _reset(self) -> None:
        self.written, self.skipped = [], []
        self._best: dict[str, list] = {name: [] for name in self.outcomes}  # min-heaps of (confidence, n, tile)
        self._counter = itertools.count()

    def outcome(self, predicted: int, label: int) -> str:
        if len(self.class_names) != 2:
            return "correct" if predicted == label else "incorrect"
        positive = self.operating_point.positive_index
        return ("T" if predicted == label else "F") + ("P" if predicted == positive else "N")

    def _iteration(self, engine: Engine) -> None:
        if self.saliency is None:
            self.saliency = Saliency(engine.network, self.method, self.target_layers, self.fc_layers)
        device = next(engine.network.parameters()).device
        for item, source in zip(engine.state.output, engine.state.batch):
            image = item.get("image", source.get("image"))
            file = source_file(source, self.filename_key)
            try:
                self._explain(image, item, file, device)
            except Exception as err:  # one bad item must not stop the evaluation: report it and go on
                reason = f"{type(err).__name__}: {err}"
                logger.warning("saliency skipped for %s: %s", file or "<unnamed image>", reason)
                self.skipped.append((file, reason))

    def _explain(self, image, item: dict, file: str, device: torch.device) -> None:
        if not file:
            raise ValueError(f"no file name: batch key {self.filename_key!r} is neither a path nor an image read "
                             "with its 'filename_or_obj'")
        label = item.get("label")
        if label is None:
            raise ValueError(f"{file}: no label, the outcome (TP/FP/TN/FN) is undefined")
        label = torch.as_tensor(label).detach().cpu().reshape(-1)
        label = int(label.argmax()) if label.numel() > 1 else int(label)
        probs = torch.as_tensor(item["pred"]).detach().float().cpu().reshape(-1)
        if probs.numel() != len(self.class_names) or not torch.isfinite(probs).all():
            raise ValueError(f"{file}: prediction {probs.tolist()} is not {len(self.class_names)} finite probabilities")
        predicted = int(self.operating_point.decide(probs[None])[0])
        outcome = self.outcome(predicted, label)
        confidence = float(probs[predicted])
        saliency = self.saliency(image[None].to(device), predicted)[0]
        title = saliency_title(self.class_names[predicted], self.class_names[label], confidence)
        path = self.output_dir / "saliency" / f"{Path(file).name.split('.')[0]}_{outcome}.png"
        plot_saliency_overlay(image, saliency, title, path)
        self.written.append(path)
        tile = (as_numpy(image[:1]), as_numpy(saliency), f"{Path(file).name}\n{title}")
        heap = self._best[outcome]
        entry = (confidence, next(self._counter), tile)
        if len(heap) < self.per_outcome:
            heapq.heappush(heap, entry)
        else:
            heapq.heappushpop(heap, entry)

    def _complete(self, engine: Engine) -> None:
        rows = {name: [tile for _, _, tile in sorted(heap, reverse=True)] for name, heap in self._best.items()}
        if self.written:
            plot_saliency_gallery(rows, self.output_dir / "saliency_gallery.png", ncols=self.per_outcome)
        logger.info("saliency: %d maps in %s, %d skipped", len(self.written), self.output_dir / "saliency",
                    len(self.skipped))
