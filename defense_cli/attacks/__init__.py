"""Attacks (foolbox adapters and our own), BPDA and the threat models."""

from defense_cli.attacks.base import Attack, AttackResult
from defense_cli.attacks.factory import build_attack, build_suite
from defense_cli.attacks.threat_models import ThreatModel, build_threat_model

__all__ = ["Attack", "AttackResult", "ThreatModel", "build_attack", "build_suite", "build_threat_model"]
