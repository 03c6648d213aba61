"""The one error the CLI turns into a one-line message and a nonzero exit."""


class ConfigError(ValueError):
    """Something the user must fix before any trial starts; the message says what and where."""


class SweepBusy(ConfigError):
    """Another live driver runs this stage (a scheduled run that overlaps the previous one)."""
