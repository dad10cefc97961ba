"""Errors the user can act on. The CLI prints them as one line and exits non-zero, never a traceback."""


class UserError(Exception):
    """Bad input or environment: missing file, corrupt trace, a script that failed, ..."""

    exit_code = 2


class TraceFormatError(UserError):
    """The file exists but is not a readable profile (corrupt, truncated, unknown format)."""
