"""Classifiers for 28x28 and 32x32 images; input normalisation lives inside the model."""

from defense_cli.models.classifier import Classifier
from defense_cli.models.registry import build_classifier, list_architectures, register_architecture

__all__ = ["Classifier", "build_classifier", "list_architectures", "register_architecture"]
