"""Classifier training (plain, on defended images, adversarial) and the artifact cache."""
