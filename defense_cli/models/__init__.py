"""Classifiers for 28x28 and 32x32 images; input normalisation lives inside the model."""

from defense_cli.models.classifier import Classifier
from defense_cli.models.factory import build_classifier

__all__ = ["Classifier", "build_classifier"]
