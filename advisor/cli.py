"""`npu-advise` command line: a click group whose subcommands live in `npu_advise.commands.*`.

Subcommands are imported only when invoked, so `npu-advise analyze` does not pay for torch, libcst or
the collector at start-up.
"""
from __future__ import annotations

import importlib
import sys

import click

from .errors import EXIT_CODES_HELP, EXIT_INTERNAL, EXIT_INTERRUPTED, UserError

# name -> "module:attribute" of a click.Command
COMMANDS = {
    "profile": "npu_advise.commands.profile:profile",
    "analyze": "npu_advise.commands.analyze:analyze",
    "check": "npu_advise.commands.check:check",
    "apply": "npu_advise.commands.apply:apply",
    "compare": "npu_advise.commands.compare:compare",
    "rules": "npu_advise.commands.rules:rules",
    "verify": "npu_advise.commands.verify:verify",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.version_option(package_name="npu-advise")
@click.option("--debug", is_flag=True, help="Show Python tracebacks instead of one-line errors.")
@click.option("--quiet", "-q", is_flag=True,
              help="Print only errors and results (for scripts and CI): no progress display, no info lines; "
                   "also accepted after the command name.")
@click.pass_context
def cli(ctx, debug, quiet):
    """Profiling-driven optimization advisor for PyTorch training on Ascend NPUs.

    Progress is shown on stderr when it is a terminal."""
    from .progress import set_quiet

    set_quiet(quiet)
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# Commands whose process may end without tearing the interpreter down once they succeed: `analyze` has
# written and closed every output by then, and freeing its trace tables object by object at exit took
# 0.1-0.3 s (10 % of a run). Only for the console script itself (argv None), never for in-process callers.
FAST_EXIT = {"analyze"}


def main(argv=None):
    args = argv if argv is not None else sys.argv[1:]
    debug = "--debug" in args
    command = next((a for a in args if not a.startswith("-")), None)
    if argv is None and command in FAST_EXIT:
        # A short run that keeps its data to the end: the cyclic collector would only rescan the
        # imported modules and the trace tables, ~160 times (50 ms).
        import gc
        gc.disable()
    try:
        cli.main(args=argv, prog_name="npu-advise", standalone_mode=False)
        if argv is None and command in FAST_EXIT:
            _exit_now(0)
    except click.exceptions.Abort:
        click.echo("npu-advise: aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        if debug:
            raise
        click.echo(f"npu-advise: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("npu-advise: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # a bug of ours: still one line, with how to get the traceback
        if debug:
            raise
        click.echo(f"npu-advise: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                   err=True)
        sys.exit(EXIT_INTERNAL)


def _exit_now(code: int):
    import os
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
