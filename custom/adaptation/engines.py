"""MONAI training engine for unsupervised domain adaptation: feature alignment between a labelled source batch and an
unlabelled target batch (DANN, CORAL or MMD), with an optional supervised contrastive term."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from custom.adaptation.domain import dann_lambda
from custom.adaptation.losses import SupConLoss, coral_loss, mmd_loss

ALIGNMENTS = ("adversarial", "coral", "mmd")


class DANNTrainer(SupervisedTrainer):
    """`SupervisedTrainer` whose iteration also draws an unlabelled target batch and aligns the two domains' features.

    The network needs ``forward_features`` ((B, ...) -> (B, F)) and ``label_head`` ((B, F) -> (B, num_classes)):
    `custom.adaptation.domain.DANNClassifier` (which also has ``domain_logits``, ``grl`` and ``projection``) or
    `custom.models.networks.TorchvisionClassifier` with a separate ``domain_head``
    (`custom.adaptation.domain.DomainDiscriminator`, trained by the same optimizer).

    Per iteration, with source inputs (B_s, ...) and labels (B_s,) from ``prepare_batch`` and target inputs
    (B_t, ...) = ``target_batch[target_key]`` (labels, if any, are never read), both through one
    ``forward_features`` call: ``loss = label_loss + domain_weight * domain_loss + contrastive_weight * supcon``, where
    label_loss = ``loss_function`` on the source logits, supcon = `SupConLoss` on the source projections and, by
    ``alignment``, with ``lambda = dann_lambda(iteration / (max_epochs * epoch_length), gamma)``:

    * ``"adversarial"`` (DANN): cross-entropy of the (B_s + B_t, 2) domain logits (source 0, target 1) through the
      gradient reversal layer, whose ``lambda_`` is set to lambda;
    * ``"coral"``: lambda * `coral_loss` of the source and target features;
    * ``"mmd"``: lambda * `mmd_loss` of the source and target features.

    ``domain_weight=0`` never reads the target loader and is plain source-only training. ``inferer`` is not used in
    training (the features are needed); evaluators use the network's ``forward`` as usual.

    The output dict holds ``image``, ``label``, ``pred`` (source logits), ``loss`` and the detached scalars
    ``label_loss``, ``domain_loss``, ``contrastive_loss``, ``lambda``; decollate and postprocessing run as in the
    parent.

    Args:
        target_data_loader: target-domain loader, cycled indefinitely (required unless ``domain_weight == 0``).
        target_key: key of the target batch holding the network inputs (``"embedding"`` for the embedding cache).
        domain_weight, contrastive_weight: loss weights (>= 0).
        temperature: of `SupConLoss`.
        gamma: of `dann_lambda`.
        alignment: one of `ALIGNMENTS`.
        domain_head: the adversarial discriminator when the network has no ``domain_logits``.
        other args: as `SupervisedTrainer` (``accumulation_steps`` must stay 1).
    """

    def __init__(self, *args, target_data_loader: Iterable | None = None, target_key: str = "image",
                 domain_weight: float = 1.0, contrastive_weight: float = 0.0, temperature: float = 0.1,
                 gamma: float = 10.0, alignment: str = "adversarial", domain_head: torch.nn.Module | None = None,
                 **kwargs):
        if kwargs.get("accumulation_steps", 1) != 1:
            raise ValueError("DANNTrainer does not support gradient accumulation")
        if domain_weight < 0 or contrastive_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got domain {domain_weight}, contrastive {contrastive_weight}")
        if domain_weight > 0 and target_data_loader is None:
            raise ValueError("domain_weight > 0 needs a target_data_loader")
        if alignment not in ALIGNMENTS:
            raise ValueError(f"unknown alignment {alignment!r}; choose one of {list(ALIGNMENTS)}")
        super().__init__(*args, **kwargs)
        if alignment == "adversarial" and domain_weight > 0:
            if not hasattr(domain_head if domain_head is not None else self.network, "grl"):
                raise ValueError(f"adversarial alignment needs a domain_head: {type(self.network).__name__} has no "
                                 "domain_logits / grl of its own")
        if contrastive_weight > 0 and not hasattr(self.network, "projection"):
            raise ValueError(f"contrastive_weight > 0 needs a network with a projection head, not "
                             f"{type(self.network).__name__}")
        self.alignment = alignment
        self.domain_head = domain_head
        self.target_data_loader = target_data_loader
        self.target_key = target_key
        self.domain_weight = float(domain_weight)
        self.contrastive_weight = float(contrastive_weight)
        self.contrastive_loss = SupConLoss(temperature)
        self.gamma = gamma
        self._target_iter = None

    def next_target_inputs(self) -> torch.Tensor:
        """The next target batch's ``target_key`` tensor on the engine's device; restarts the loader when exhausted."""
        for _ in range(2):
            if self._target_iter is None:
                self._target_iter = iter(self.target_data_loader)
            try:
                batch = next(self._target_iter)
                return batch[self.target_key].to(self.state.device, non_blocking=self.non_blocking)
            except StopIteration:
                self._target_iter = None
        raise ValueError("target_data_loader is empty")

    def domain_loss(self, features: torch.Tensor, n_source: int, lambda_: float) -> torch.Tensor:
        """The `alignment` loss of (B_s + B_t, F) features, the first `n_source` rows from the source domain."""
        if self.alignment == "coral":
            return lambda_ * coral_loss(features[:n_source], features[n_source:])
        if self.alignment == "mmd":
            return lambda_ * mmd_loss(features[:n_source], features[n_source:])
        if self.domain_head is not None:
            self.domain_head.grl.lambda_ = lambda_
            logits = self.domain_head(features)
        else:
            self.network.grl.lambda_ = lambda_
            logits = self.network.domain_logits(features)
        domains = torch.cat([torch.zeros(n_source), torch.ones(len(features) - n_source)]).long()
        return F.cross_entropy(logits, domains.to(features.device))

    def _iteration(self, engine: DANNTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[:2]
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        network = engine.network
        progress = engine.state.iteration / (engine.state.max_epochs * engine.state.epoch_length)
        lambda_ = dann_lambda(progress, engine.gamma)
        adapt = engine.domain_weight > 0
        target_inputs = engine.next_target_inputs() if adapt else None

        def _compute_pred_loss():
            n = len(inputs)
            features = network.forward_features(torch.cat([inputs, target_inputs]) if adapt else inputs)
            engine.state.output[Keys.PRED] = network.label_head(features[:n])
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            zero = features.new_zeros(())
            label_loss = engine.loss_function(engine.state.output[Keys.PRED], targets).mean()
            domain_loss = zero
            if adapt:
                domain_loss = engine.domain_loss(features, n, lambda_)
            contrastive = zero
            if engine.contrastive_weight > 0:
                contrastive = engine.contrastive_loss(network.projection(features[:n]), targets)
            engine.state.output[Keys.LOSS] = (label_loss + engine.domain_weight * domain_loss
                                              + engine.contrastive_weight * contrastive)
            engine.state.output.update({"label_loss": label_loss.detach(), "domain_loss": domain_loss.detach(),
                                        "contrastive_loss": contrastive.detach(), "lambda": lambda_})
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        network.train()
        if engine.domain_head is not None:
            engine.domain_head.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                _compute_pred_loss()
            engine.scaler.scale(engine.state.output[Keys.LOSS]).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            _compute_pred_loss()
            engine.state.output[Keys.LOSS].backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
