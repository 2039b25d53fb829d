"""User-facing errors: one clear line, no traceback (the CLI catches these)."""


class SFDError(Exception):
    """A problem with what the user asked for: a bad path, value or combination of options."""


class DivergenceError(SFDError):
    """A loss became NaN or infinite (the update that would have used it is not applied)."""


class Interrupted(SFDError):
    """Training stopped on request (Ctrl-C) at an iteration boundary, after saving its state."""
