"""Errors a user can fix. The CLI turns them into one paragraph and exit code 2."""


class ConfigError(ValueError):
    """A config value, option or input that is not allowed; the message names it and what is."""


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking store cannot be reached; the message names its URI and what to do."""


class TrainingDiverged(ConfigError):
    """Training produced a non-finite loss: a setting (learning rate, optimiser) to change."""
