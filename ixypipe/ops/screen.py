"""The live terminal of ``ixypipe top``: refresh once per interval, quit on q or Ctrl-C.

On a terminal it switches to the alternate screen, hides the cursor, puts
the keyboard in cbreak mode (keys arrive one by one, Ctrl-C still raises
SIGINT) and redraws in place; whatever happens it restores the terminal.
When stdout is not a terminal (a pipe, a log) it prints each frame as plain
text followed by a blank line, without escape codes.  The loop ends on q,
on Ctrl-C, after ``iterations`` frames, or when the pipeline ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Callable

from ixypipe.ops.top import Observer, compute_view, render

ALT_SCREEN_ON = "\x1b[?1049h"
ALT_SCREEN_OFF = "\x1b[?1049l"
CURSOR_HIDE = "\x1b[?25l"
CURSOR_SHOW = "\x1b[?25h"
HOME = "\x1b[H"
CLEAR_LINE_END = "\x1b[K"
CLEAR_BELOW = "\x1b[J"
QUIT_KEYS = ("q", "Q")


@contextlib.contextmanager
def _cbreak(fd: int | None):
    """Keys one at a time while inside (no-op when ``fd`` is not a terminal)."""
    if fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_key(fd: int | None, timeout: float) -> str:
    """A key pressed within ``timeout`` seconds, or '' (sleeps when there is no keyboard)."""
    if fd is None:
        time.sleep(timeout)
        return ""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return ""
    data = os.read(fd, 32)
    return data.decode(errors="replace") if data else ""


def run_screen(obs: Observer, interval: float = 1.0, iterations: int | None = None, out=None,
               keyboard: int | None = -1, clock: Callable[[], float] = time.monotonic) -> str:
    """Show ``obs`` until quit; returns why it stopped ("q", "ctrl-c", "iterations", "pipeline ended").

    ``keyboard``: file descriptor to read keys from (-1: stdin when it is a
    terminal; None: no keyboard).
    """
    out = out or sys.stdout
    if keyboard == -1:
        keyboard = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    live = out.isatty()
    frames = 0
    reason = "iterations"
    if live:
        out.write(ALT_SCREEN_ON + CURSOR_HIDE)
        out.flush()
    try:
        with _cbreak(keyboard):
            before = obs.sample()
            while iterations is None or frames < iterations:
                deadline = clock() + interval
                key = ""
                while not key and (left := deadline - clock()) > 0:
                    key = _wait_for_key(keyboard, left)
                    if key and not any(k in key for k in QUIT_KEYS):
                        key = ""        # other keys: ignored
                if key:
                    reason = "q"
                    break
                if not obs.alive():
                    reason = "pipeline ended"
                    break
                after = obs.sample()
                lines = render(compute_view(obs, before, after), shutil.get_terminal_size().columns if live else None)
                before = after
                frames += 1
                if live:
                    out.write(HOME + "".join(line + CLEAR_LINE_END + "\n" for line in lines) + CLEAR_BELOW)
                else:
                    out.write("\n".join(lines) + "\n\n")
                out.flush()
    except KeyboardInterrupt:
        reason = "ctrl-c"
    finally:
        if live:
            out.write(CURSOR_SHOW + ALT_SCREEN_OFF)
            out.flush()
    return reason
