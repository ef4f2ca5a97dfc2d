"""The user's own models: a state_dict for one of the architectures, a whole saved model
(TorchScript, torch.export), a network class from the user's own package; mismatches are
ConfigErrors before any MLflow run."""

from __future__ import annotations

import textwrap

import pytest
import torch

from conftest import run_cli, runs_in
from defense_cli.config import compose
from defense_cli.errors import ConfigError
from defense_cli.models import build_classifier

MNIST = compose().dataset


def _built(*overrides: str):
    cfg = compose(list(overrides))
    return build_classifier(cfg.model, cfg.dataset).eval()


@pytest.fixture
def trained_like(tmp_path):
    """A small_cnn with random (not freshly initialised) weights and its Classifier state_dict file."""
    torch.manual_seed(1)
    model = _built("model=small_cnn")
    with torch.no_grad():
        for tensor in model.backbone.state_dict().values():
            if tensor.is_floating_point() and tensor.ndim:
                tensor.add_(torch.randn_like(tensor) * 0.1)
    path = tmp_path / "net.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_state_dict_checkpoint_gives_the_saved_models_outputs(trained_like, tmp_path):
    model, path = trained_like
    x = torch.rand(4, 1, 28, 28)
    loaded = _built("model=small_cnn", f"model.checkpoint={path}")
    assert torch.equal(loaded(x), model(x))
    assert loaded.backbone.pretrained
    torch.save(model.backbone.state_dict(), tmp_path / "backbone.pt")  # the bare network's keys load too
    assert torch.equal(_built("model=small_cnn", f"model.checkpoint={tmp_path / 'backbone.pt'}")(x), model(x))


def test_a_checkpoint_saved_with_other_normalisation_is_refused(trained_like):
    _, path = trained_like  # a Classifier state_dict: it carries the dataset's mean and std
    with pytest.raises(ConfigError, match=r"was saved with input mean \[0\.1307.*this run normalises with \[0\.0\]"):
        _built("model=small_cnn", f"model.checkpoint={path}", "model.normalization=none")


def test_a_checkpoint_of_another_shape_names_the_keys_and_shapes(trained_like):
    _, path = trained_like
    with pytest.raises(ConfigError, match=r"does not fit model=small_cnn: shape of features\.0\.0\.weight "
                                          r"\(32, 1, 3, 3\) where the model has \(16, 1, 3, 3\)"):
        _built("model=small_cnn", "model.width=16", f"model.checkpoint={path}")
    with pytest.raises(ConfigError, match=r"does not fit model=lenet: missing conv\.0\.bias"):
        _built("model=lenet", f"model.checkpoint={path}")


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_a_whole_saved_model_is_evaluated_as_saved(trained_like, tmp_path, kind):
    model, _ = trained_like
    example = torch.rand(2, 1, 28, 28)
    path = tmp_path / f"net.{kind}"
    if kind == "torchscript":
        torch.jit.save(torch.jit.trace(model, example), path)
    else:
        batch = torch.export.Dim("batch")
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), path)
    loaded = _built("model=saved", f"model.path={path}", "model.normalization=none")
    assert loaded.backbone.kind == kind and loaded.backbone.pretrained
    x = torch.rand(5, 1, 28, 28, requires_grad=True)
    assert torch.allclose(loaded(x), model(x), atol=1e-5)
    loaded(x).sum().backward()  # attacks need gradients through it
    assert x.grad.abs().sum() > 0
    # the saved model already normalises; normalization=dataset normalises once more
    renormalised = _built("model=saved", f"model.path={path}", "model.normalization=dataset")
    assert not torch.allclose(renormalised(x), model(x), atol=1e-3)


def test_saved_model_errors(trained_like, tmp_path):
    _, state_dict_file = trained_like
    with pytest.raises(ConfigError, match=r"model\.path=.* is a state_dict, not a whole model: use .*model\.checkpoint"):
        _built("model=saved", f"model.path={state_dict_file}", "model.normalization=none")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a model")
    with pytest.raises(ConfigError, match="neither a TorchScript file"):
        _built("model=saved", f"model.path={text_file}", "model.normalization=none")
    with pytest.raises(ConfigError, match=r"model.path='/no/such.pt2' is not a file"):
        _built("model=saved", "model.path=/no/such.pt2", "model.normalization=none")


def test_a_saved_model_for_other_images_is_refused(trained_like, tmp_path):
    model, _ = trained_like
    path = tmp_path / "mnist.pt"
    torch.jit.save(torch.jit.trace(model, torch.rand(2, 1, 28, 28)), path)
    with pytest.raises(ConfigError, match=r"model=saved does not take this dataset's 3x32x32 images"):
        _built("model=saved", f"model.path={path}", "model.normalization=none", "dataset=cifar10")


def _user_package(tmp_path, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent("""
        from torch import nn

        class Net(nn.Module):  # takes no in_channels / num_classes: it knows its own shape
            def __init__(self, hidden=8):
                super().__init__()
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))

            def forward(self, x):
                return self.body(x)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_users_own_class_by_import_path(tmp_path, monkeypatch):
    _user_package(tmp_path, monkeypatch)
    model = _built("model=custom", "model._target_=userpkg.nets.Net", "+model.hidden=5", "model.normalization=none")
    assert model.backbone.body[1].out_features == 5
    assert torch.equal(model.mean, torch.zeros(1, 1, 1, 1)) and torch.equal(model.std, torch.ones(1, 1, 1, 1))
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    torch.save(model.state_dict(), tmp_path / "user.pt")
    again = _built("model=custom", "model._target_=userpkg.nets.Net", "+model.hidden=5", "model.normalization=none",
                   f"model.checkpoint={tmp_path / 'user.pt'}")
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(again(x), model(x))
    with pytest.raises(ConfigError, match=r"model._target_='userpkg.nope.Net' cannot be imported"):
        _built("model=custom", "model._target_=userpkg.nope.Net", "model.normalization=none")


def test_normalization_must_be_one_of_the_allowed():
    with pytest.raises(ConfigError, match=r"model.normalization='zscore' is not allowed; allowed: dataset .* none"):
        _built("model=small_cnn", "model.normalization=zscore")


@pytest.mark.slow
def test_run_evaluates_the_checkpoint_and_a_bad_one_writes_no_run(home, trained_like, tmp_path):
    model, path = trained_like
    limit = 64
    result = run_cli("run", f"model.checkpoint={path}", f"dataset.limit={limit}", "attack=none",
                     f"paths.home={home}", cwd=home)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs_in(home)
    from defense_cli.data import load_dataset

    test = load_dataset(compose([f"dataset.limit={limit}"]).dataset, home).test
    images, labels = next(test.batches(limit))
    expected = (model(images).argmax(1) == labels).float().mean().item()
    assert run.data.metrics["clean_accuracy"] == pytest.approx(expected)
    assert not (home / ".defense_cli_cache" / "models").exists()  # used as given: not trained, not cached

    bad = run_cli("run", "model=lenet", f"model.checkpoint={path}", f"paths.home={home}", cwd=home)
    assert bad.returncode == 2
    assert "does not fit model=lenet" in bad.stderr and "Traceback" not in bad.stderr
    assert len(runs_in(home)) == 1
