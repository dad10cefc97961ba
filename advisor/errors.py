"""Errors the user can act on, and the exit status of every command.

The CLI prints an error as one line and exits non-zero, never with a traceback. The exit statuses are part
of the interface (scripts and CI branch on them); they are documented in README.md and `npu-advise --help`:
"""

EXIT_OK = 0
EXIT_FINDINGS = 1        # `check`: findings at or above --fail-on (the command itself worked)
EXIT_USER_ERROR = 2      # bad input or environment: missing/corrupt file, failed script, refused fix, bad option
EXIT_INTERNAL = 3        # a bug of npu-advise (rerun with --debug for the traceback)
EXIT_INTERRUPTED = 130   # Ctrl-C, as a shell reports SIGINT

EXIT_CODES_HELP = ("Exit status: 0 ok; 1 `check` found findings at or above --fail-on; "
                   "2 user or input error (missing or corrupt file, failed script, refused fix, bad option); "
                   "3 internal error (rerun with --debug); 130 interrupted.")


class UserError(Exception):
    """Bad input or environment: missing file, corrupt trace, a script that failed, ..."""

    exit_code = EXIT_USER_ERROR


class TraceFormatError(UserError):
    """The file exists but is not a readable profile (corrupt, truncated, unknown format)."""
