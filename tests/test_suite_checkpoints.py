"""Suite checkpoints: an evaluation killed between two attacks of a batch resumes after the last
finished attack and gives, bit for bit, what the uninterrupted evaluation gives (a random defense's
draws included); a corrupt checkpoint or one of other images is not used."""

from __future__ import annotations

import pytest
import torch
from attack_helpers import pooled_blob_task

from defense_cli.attacks.base import Attack
from defense_cli.attacks import checkpoint
from defense_cli.attacks.checkpoint import SuiteCheckpoints
from defense_cli.attacks.foolbox_attacks import FGSM, PGD
from defense_cli.attacks.suite import AttackSuite
from defense_cli.attacks.threat_models import WhiteBox
from defense_cli.data import ImageSet
from defense_cli.defenses.menet import MENet
from defense_cli.evaluation import Evaluation, evaluate

CPU = torch.device("cpu")
BATCH = 24
COMPARED = ("robust", "broken_by", "adversarial", "defended_adversarial", "draws", "defended_clean", "l2", "linf",
            "iterate_fooled")


class CountingFGSM(FGSM):
    """FGSM that counts the images it perturbs."""

    def __init__(self, eps: float) -> None:
        super().__init__(eps=eps)
        self.images = 0

    def perturb(self, model, images, labels, generator):
        self.images += len(images)
        return super().perturb(model, images, labels, generator)


class Interruption(Attack):
    """No perturbation; while `armed`, the run stops here, as a killed process would."""

    uses_gradients = False
    eps = 0.0

    def __init__(self) -> None:
        self.armed = False

    def perturb(self, model, images, labels, generator):
        if self.armed:
            raise KeyboardInterrupt("killed")
        return images.clone()


@pytest.fixture(scope="module")
def task():
    return pooled_blob_task(4, 12, seed=3)


def suite() -> AttackSuite:
    """FGSM leaves most points robust (41 of 48 here), PGD at a larger budget most of the rest."""
    return AttackSuite({"fgsm": CountingFGSM(eps=0.06), "stop": Interruption(),
                        "pgd": PGD(eps=0.1, steps=5, step_size=0.03)})


def evaluation(model, test: ImageSet, attacks: AttackSuite, checkpoints: SuiteCheckpoints | None) -> Evaluation:
    threat_model = WhiteBox(bpda="identity", eot_samples=2, n_draws=3)
    defense = MENet(method="usvt", masks=2, p_start=0.6, p_end=0.9)
    return evaluate(model, defense, attacks, threat_model, test, BATCH, CPU, torch.Generator().manual_seed(7), 0,
                    checkpoints=checkpoints)


def assert_same(resumed: Evaluation, reference: Evaluation) -> None:
    for name in COMPARED:
        assert torch.equal(resumed.cat(name), reference.cat(name)), name
    for name, masks in reference.robust_under.items():
        assert torch.equal(torch.cat(resumed.robust_under[name]), torch.cat(masks)), name
    assert resumed.gradient_evaluations == reference.gradient_evaluations


def test_a_run_killed_between_attacks_resumes_after_the_last_finished_one_with_the_uninterrupted_result(task, tmp_path):
    model, test = task
    reference = evaluation(model, test, suite(), None)
    checkpoints = SuiteCheckpoints(tmp_path / "run", "hash")
    killed = suite()
    killed.attacks["stop"].armed = True
    with pytest.raises(KeyboardInterrupt):
        evaluation(model, test, killed, checkpoints)
    assert killed.attacks["fgsm"].images > 0 and [p.name for p in (tmp_path / "run").iterdir()] == ["batch0.pt"]

    again = suite()
    resumed = evaluation(model, test, again, checkpoints)
    assert resumed.resumed_attacks == 1                              # batch 0's FGSM came from the checkpoint
    assert again.attacks["fgsm"].images == len(test) - BATCH          # it ran on the other batch only
    assert_same(resumed, reference)
    after = {name: int(torch.cat(masks).sum()) for name, masks in reference.robust_under.items()}
    assert after["fgsm"] > after["pgd"] > 0 and resumed.attack_seconds > 0


def test_a_corrupt_checkpoint_is_deleted_and_its_batch_starts_from_its_first_attack(task, tmp_path):
    model, test = task
    reference = evaluation(model, test, suite(), None)
    checkpoints = SuiteCheckpoints(tmp_path / "run", "hash")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "batch0.pt").write_bytes(b"PK\x03\x04 truncated")
    again = suite()
    resumed = evaluation(model, test, again, checkpoints)
    assert resumed.resumed_attacks == 0 and again.attacks["fgsm"].images == len(test)
    assert_same(resumed, reference)


@pytest.mark.parametrize("change", ["other images", "another config", "changed code"])
def test_a_checkpoint_of_other_images_another_config_or_other_code_is_not_used(task, tmp_path, monkeypatch, change):
    model, test = task
    killed = suite()
    killed.attacks["stop"].armed = True
    with pytest.raises(KeyboardInterrupt):
        evaluation(model, test, killed, SuiteCheckpoints(tmp_path / "run", "hash"))
    if change == "other images":
        test = ImageSet(test.images.flip(0), test.labels.flip(0))
    if change == "changed code":
        monkeypatch.setattr(checkpoint, "code_fingerprint", lambda: "a fix to an attack since")
    again = suite()
    resumed = evaluation(model, test, again, SuiteCheckpoints(tmp_path / "run", "another config"
                                                              if change == "another config" else "hash"))
    assert resumed.resumed_attacks == 0 and again.attacks["fgsm"].images == len(test)
