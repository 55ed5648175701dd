"""What every ``ixypipe`` sub-command shares: -v/-q/--json anywhere, the packet-rate type, errors as text or JSON.

* ``-v/--verbose``, ``-q/--quiet`` and ``--json`` are accepted before or after the
  sub-command (``ixypipe --json cores`` = ``ixypipe cores --json``): the
  group adds :func:`shared_params` to every command it loads, and both
  spellings land in the context's ``meta``, which a command reads with
  :func:`wants_json`.
* :data:`PPS` is the one type of every rate option: packets per second,
  with k/M suffixes (``--rate 1.5M`` = 1,500,000 pps), at most MAX_RATE_PPS.
* :class:`Seconds` is the type of every duration and interval, :class:`Count`
  of every number of packets, pages or iterations: NaN, infinities, negative
  numbers and values beyond MAX_SECONDS / MAX_COUNT are usage errors (exit 2,
  "Invalid value for '--duration'"), so no command runs forever or overflows
  a 64-bit counter on a typo.
* A command reports a failure by raising :class:`CommandError` (exit 1, or
  the code it gives); with ``--json`` any click error, usage errors
  included, is printed as ``{"type": "error", "time": ..., "message": ...,
  "exit_code": N}`` on stdout instead of text (see ixypipe.cli).
* With ``--json`` every command prints JSON Lines on stdout, each object
  with ``type`` and ``time`` (:func:`emit_json`; docs/json.md, the schema in
  docs/schema/ixypipe-output.schema.json).
"""

from __future__ import annotations

import logging
import math
import re

import click

from ixypipe.jsonout import json_line
from ixypipe.proc import set_log_level

JSON_KEY = "ixypipe.json"
QUIET_KEY = "ixypipe.quiet"
ARGV_KEY = "ixypipe.argv"
MAX_SECONDS = 1e9                # ~31 years: any duration or interval beyond it is a typo
MAX_COUNT = (1 << 63) - 1        # packets, pages, iterations: what a signed 64-bit counter holds
MAX_RATE_PPS = 1e10              # 10 Gpps, beyond any port (100 Gbit/s of 64-byte frames is 149 Mpps)


class RateType(click.ParamType):
    """Packets per second: ``300000``, ``300k``, ``1.5M`` (k = 1e3, M = 1e6), >= 0."""

    name = "PPS"
    _SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}
    _FORM = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmM]?)(?:pps)?\s*$")

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            m = self._FORM.match(str(value))
            if not m:
                self.fail(f"{value!r} is not a packet rate: a number of packets per second, optionally with "
                          f"k or M (300k, 1.5M)", param, ctx)
            number = float(m.group(1)) * self._SUFFIX[m.group(2)]
        if number < 0:
            self.fail(f"{value!r} is negative; a rate is >= 0 packets per second", param, ctx)
        if not number <= MAX_RATE_PPS:
            self.fail(f"{value!r} is beyond {MAX_RATE_PPS:.0e} packets per second", param, ctx)
        return number


PPS = RateType()


class Seconds(click.FloatRange):
    """A finite number of seconds from ``min`` (excluded with ``min_open``) to ``max``: durations, intervals."""

    name = "SECONDS"

    def __init__(self, min: float = 0.0, min_open: bool = False, max: float = MAX_SECONDS):
        super().__init__(min=min, max=max, min_open=min_open)

    def convert(self, value, param, ctx) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return super().convert(number, param, ctx)


class Count(click.IntRange):
    """A whole number from ``min`` to ``max`` (by default MAX_COUNT): packets, pages, iterations."""

    name = "integer"

    def __init__(self, min: int = 0, max: int = MAX_COUNT):
        super().__init__(min=min, max=max)


class CommandError(click.ClickException):
    """A command failed; printed as 'error: MESSAGE' (or a JSON error object) with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def set_verbose(ctx: click.Context, param, value: bool) -> None:
    if value:
        set_log_level(logging.DEBUG)          # ixypipe's own loggers; numba's and others' stay at WARNING
        ctx.meta["ixypipe.verbose"] = True


def set_quiet(ctx: click.Context, param, value: bool) -> None:
    if value:
        ctx.meta[QUIET_KEY] = True
        if not ctx.meta.get("ixypipe.verbose"):
            set_log_level(logging.WARNING)    # warnings and errors only; -v wins over -q for the log


def wants_quiet(ctx: click.Context | None = None) -> bool:
    """-q/--quiet was given, before or after the sub-command: no per-second figures, no progress lines."""
    ctx = ctx or click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(QUIET_KEY))


def set_json(ctx: click.Context, param, value: bool) -> None:
    if value:
        ctx.meta[JSON_KEY] = True


def shared_params() -> list[click.Option]:
    """-v/--verbose, -q/--quiet and --json as options of one command (fresh objects for each command)."""
    return [
        click.Option(["-v", "--verbose"], is_flag=True, expose_value=False, callback=set_verbose, is_eager=True,
                     help="Log debug messages (also before the sub-command)."),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=set_quiet, is_eager=True,
                     help="Only warnings, errors, the ready line and the summary: no per-second figures "
                          "(also before the sub-command)."),
        click.Option(["--json"], is_flag=True, expose_value=False, callback=set_json, is_eager=True,
                     help="Print JSON instead of text (also before the sub-command); errors too."),
    ]


def wants_json(ctx: click.Context | None = None) -> bool:
    """--json was given, before or after the sub-command (or is on the command line at all, for parse errors)."""
    ctx = ctx or click.get_current_context(silent=True)
    if ctx is None:
        return False
    if ctx.meta.get(JSON_KEY):
        return True
    argv = ctx.meta.get(ARGV_KEY, [])
    return "--json" in (argv[:argv.index("--")] if "--" in argv else argv)


def emit_json(obj: dict) -> None:
    """One JSON output object on its own line of stdout, stamped with ``time`` (ixypipe.jsonout)."""
    click.echo(json_line(obj))


def error_object(exc: click.ClickException) -> dict:
    return {"type": "error", "message": exc.format_message(), "exit_code": exc.exit_code}
