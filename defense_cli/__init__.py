"""defense-cli: run, sweep and compare adversarial defenses, attacks and CNN compressions."""

__version__ = "0.1.0"
