"""The one error type users see: a clear message, no deep stack trace."""


class ThinkRecError(Exception):
    """Raised for bad input (data, config, run directory); the CLI prints only the message."""
