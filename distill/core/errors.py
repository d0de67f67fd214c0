"""One exception type for problems the user can fix; the CLI prints it as one line."""


class DistillError(Exception):
    """Bad input, config, data, cache or checkpoint: the message names the culprit."""


class ConfigError(DistillError):
    """A pipeline file or override that does not describe a valid run."""
