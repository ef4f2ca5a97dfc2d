"""The commands' tasks (`run`, `train`, `compress`): each composes the libraries below it."""
