"""The one exception type futurelens raises for bad input: its message says what to do."""


class FutureLensError(ValueError):
    """Bad input or an unusable environment; the message names the fix."""
