"""The ``ixypipe`` command: a click group; each command lives in ixypipe/commands/.

The group gives every command the shared options of ixypipe.commands.options
(-v/--verbose, -q/--quiet and --json, before or after the sub-command) and, when --json
is on the command line, turns any click error (usage errors: exit 2) into
one JSON error object.
"""

from __future__ import annotations

import importlib
import logging

import click

from ixypipe import __version__
from ixypipe.commands.options import (
    ARGV_KEY,
    emit_json,
    error_object,
    set_json,
    set_quiet,
    set_verbose,
    shared_params,
    wants_json,
)
from ixypipe.proc import setup_logging

# command name -> module in ixypipe.commands exposing a click command called ``command``
COMMANDS = {
    "run": "run",
    "fwd": "fwd",
    "cleanup": "cleanup",
    "sim": "sim",
    "gen": "gen",
    "hugepages": "hugepages",
    "devices": "devices",
    "bind": "bind",
    "unbind": "bind",
    "cores": "cores",
    "top": "top",
    "capture": "capture",
    "try": "try_",
    "netns": "netns",
}


class JsonError(click.ClickException):
    """A click error shown as a JSON object (--json was given)."""

    def __init__(self, exc: click.ClickException):
        super().__init__(exc.format_message())
        self.exit_code = exc.exit_code
        self.original = exc

    def show(self, file=None) -> None:
        emit_json(error_object(self.original))


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs, so --help stays fast."""

    def make_context(self, info_name, args, parent=None, **extra):
        argv = list(args)
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except click.ClickException as exc:
            if "--json" in argv:
                raise JsonError(exc) from exc
            raise
        ctx.meta[ARGV_KEY] = argv
        return ctx

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except JsonError:
            raise
        except click.ClickException as exc:
            if wants_json(ctx):
                raise JsonError(exc) from exc
            raise

    def list_commands(self, ctx):
        return sorted(name for name in COMMANDS if self._load(name) is not None)

    def get_command(self, ctx, name):
        return self._load(name)

    @staticmethod
    def _load(name):
        if name not in COMMANDS:
            return None
        try:
            module = importlib.import_module(f"ixypipe.commands.{COMMANDS[name]}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ixypipe.commands.{COMMANDS[name]}":
                return None   # not built yet
            raise
        cmd = getattr(module, name, None) or getattr(module, "command", None)
        if cmd is not None:
            _share(cmd)
        return cmd


def _share(cmd: click.Command) -> None:
    """-v/--verbose, -q/--quiet and --json on ``cmd`` and, for a group (sim), on each of its commands."""
    taken = {opt for p in cmd.params for opt in p.opts}
    cmd.params.extend(p for p in shared_params() if not taken & set(p.opts))
    for sub in getattr(cmd, "commands", {}).values():
        _share(sub)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ixypipe", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=set_verbose,
              help="Log debug messages (also after the sub-command).")
@click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=set_quiet,
              help="Only warnings, errors, the ready line and the summary (also after the sub-command).")
@click.option("--json", is_flag=True, expose_value=False, callback=set_json,
              help="JSON Lines on stdout, errors included: every object has a type and a time (docs/json.md; "
                   "also after the sub-command).")
def main() -> None:
    """ixypipe: a user-space 82599 data plane in Python.

    \b
    Start here:
      ixypipe run pipelines/fwd.toml       forward between two simulated 82599 ports
      ixypipe run pipelines/fwd.toml --duration 5 --json
      ixypipe fwd --sim                    ixy-fwd: one process, two ports
    """
    ctx = click.get_current_context()
    level = (logging.DEBUG if ctx.meta.get("ixypipe.verbose") else
             logging.WARNING if ctx.meta.get("ixypipe.quiet") else logging.INFO)
    setup_logging(level, "%(levelname)s %(name)s: %(message)s")
