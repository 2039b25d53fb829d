"""User-facing errors: one clear line, no traceback (the CLI catches these)."""


class SFDError(Exception):
    """A problem with what the user asked for: a bad path, value or combination of options."""


class DivergenceError(SFDError):
    """A loss became NaN or infinite (the update that would have used it is not applied)."""


class Interrupted(SFDError):
    """Training stopped on request (Ctrl-C) at an iteration boundary, after saving its state."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (a library's multi-line error in our one-line messages), else its type."""
    text = str(e).strip()
    return text.splitlines()[0] if text else e.__class__.__name__
