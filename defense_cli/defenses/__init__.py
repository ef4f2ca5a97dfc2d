"""Input-transformation defenses, built from the `defense` config group (`_target_`)."""

from defense_cli.defenses.base import Defense, DefenseContext, check_images
from defense_cli.defenses.factory import build_defense

__all__ = ["Defense", "DefenseContext", "build_defense", "check_images"]
