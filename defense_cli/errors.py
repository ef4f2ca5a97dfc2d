"""Errors a user can fix. The CLI turns them into one paragraph and exit code 2."""


class ConfigError(ValueError):
    """A config value, option or input that is not allowed; the message names it and what is."""
