"""Adversarial training (Madry et al. 2018), optionally through a preprocessing defense (ME-Net).

`train.adversarial` (an attack config composed by Hydra: `attack@train.adversarial=pgd7` is Madry
et al.'s PGD-7, eps 8/255, step 2/255, random start; `train.adversarial.steps=10` changes it)
replaces every training batch by that attack's adversarial examples against the model being
trained. The model is put in eval mode while the attack runs (batch-norm statistics are not
updated by the attack's forward passes) and back in train mode for the update.

`train.adversarial_defense` (a defense config, `defense@train.adversarial_defense=<option>`) is
ME-Net's "prep. + adv. train"
(`003_b8a380e28ee315f5.txt`, section 3.3 and Table 4): the attack runs against
classifier(BPDA(defense(x))) (identity backward pass) and the model trains on defense(x_adv).
A defense that needs a classifier (R-CAM, Aug-MSROI saliency) uses the model being trained.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from defense_cli.attacks import Attack, build_attack
from defense_cli.attacks.bpda import DefendedClassifier
from defense_cli.defenses import Defense, DefenseContext, build_defense


class AdversarialBatches:
    """Turns a clean training batch into the batch to train on: attack(x), or defense(attack(x))."""

    def __init__(self, attack: Attack, defense: Defense | None, generator: torch.Generator) -> None:
        self.attack, self.defense, self.generator = attack, defense, generator

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        model.eval()
        target = model if self.defense is None else DefendedClassifier(model, self.defense, self.generator)
        adversarial = self.attack(target, images, labels, self.generator).adversarial
        if self.defense is not None:  # still in eval mode: a CAM defense's forward must not move BN statistics
            adversarial = self.defense(adversarial, self.generator)
        model.train()
        return adversarial


def adversarial_batches(train_cfg: DictConfig, context: DefenseContext) -> AdversarialBatches | None:
    """The batch transform of `train.adversarial` (None when it is null)."""
    if train_cfg.adversarial is None:
        return None
    defense = None
    if train_cfg.adversarial_defense is not None:
        defense = build_defense(train_cfg.adversarial_defense)
        defense.prepare(context)
    generator = torch.Generator(device=context.device).manual_seed(train_cfg.seed)
    return AdversarialBatches(build_attack(train_cfg.adversarial), defense, generator)
