"""The ``ixypipe`` command: a click group; each command lives in ixypipe/commands/."""

from __future__ import annotations

import importlib
import logging

import click

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
}


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs, so --help stays fast."""

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
        return getattr(module, name, None) or getattr(module, "command", None)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """ixypipe: a user-space 82599 data plane in Python.

    \b
    Start here:
      ixypipe run pipelines/fwd.toml       forward between two simulated 82599 ports
      ixypipe run pipelines/fwd.toml --duration 5 --json
      ixypipe fwd --sim                    ixy-fwd: one process, two ports
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
