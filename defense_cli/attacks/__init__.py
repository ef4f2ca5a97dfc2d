"""Attacks (foolbox adapters and our own), BPDA and the threat models."""

from defense_cli.attacks.base import Attack, AttackResult
from defense_cli.attacks.factory import build_attack
from defense_cli.attacks.threat_models import THREAT_MODELS, attack_target

__all__ = ["THREAT_MODELS", "Attack", "AttackResult", "attack_target", "build_attack"]
