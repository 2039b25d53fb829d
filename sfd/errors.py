"""User-facing errors: one clear line, no traceback (the CLI catches these)."""


class SFDError(Exception):
    """A problem with what the user asked for: a bad path, value or combination of options."""
