"""The live terminal of ``ixypipe top``: refresh once per interval, follow resizes, quit on q or Ctrl-C.

On a terminal it switches to the alternate screen, hides the cursor, puts
the keyboard in cbreak mode (keys arrive one by one, Ctrl-C still raises
SIGINT) and draws each line at its own row (cursor addressing, so the last
row never scrolls the screen), cut to the terminal's width and height as
they are at that moment; a resize (SIGWINCH) redraws at once.  Whatever
happens it restores the terminal.  When stdout is not a terminal (a pipe,
a log) it prints each frame as plain text followed by a blank line, or one
JSON object per interval with ``as_json``.  The loop ends on q, on Ctrl-C,
after ``iterations`` frames, or when the pipeline ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable

from ixypipe.jsonout import json_line
from ixypipe.ops.top import Observer, compute_view, render, view_json

ALT_SCREEN_ON = "\x1b[?1049h"
ALT_SCREEN_OFF = "\x1b[?1049l"
CURSOR_HIDE = "\x1b[?25l"
CURSOR_SHOW = "\x1b[?25h"
CLEAR_LINE_END = "\x1b[K"
CLEAR_BELOW = "\x1b[J"
QUIT_KEYS = ("q", "Q")
KEY_POLL = 0.1               # seconds between looks at the keyboard and the resize flag


def goto(row: int) -> str:
    """Cursor to column 1 of ``row`` (1-based)."""
    return f"\x1b[{row};1H"


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


@contextlib.contextmanager
def _on_resize(flag: list[bool]):
    """Set flag[0] on SIGWINCH while inside (the main thread only; elsewhere the next frame picks the size up)."""
    try:
        old = signal.signal(signal.SIGWINCH, lambda signum, frame: flag.__setitem__(0, True))
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, old)


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


def terminal_size(out) -> tuple[int, int]:
    """(columns, lines) of the terminal ``out`` writes to, now (not from $COLUMNS/$LINES, which go stale)."""
    try:
        size = os.get_terminal_size(out.fileno())
        if size.columns > 0 and size.lines > 0:
            return size.columns, size.lines
    except (OSError, ValueError, AttributeError):
        pass
    size = shutil.get_terminal_size()
    return size.columns, size.lines


def draw(out, lines: list[str]) -> None:
    """One frame: each line at its row, rest of the line and of the screen cleared."""
    out.write("".join(goto(i + 1) + line + CLEAR_LINE_END for i, line in enumerate(lines))
              + goto(len(lines) + 1) + CLEAR_BELOW if lines else goto(1) + CLEAR_BELOW)
    out.flush()


def run_screen(obs: Observer, interval: float = 1.0, iterations: int | None = None, out=None,
               keyboard: int | None = -1, clock: Callable[[], float] = time.monotonic,
               as_json: bool = False) -> str:
    """Show ``obs`` until quit; returns why it stopped ("q", "ctrl-c", "iterations", "pipeline ended").

    ``keyboard``: file descriptor to read keys from (-1: stdin when it is a
    terminal; None: no keyboard).  ``as_json``: one JSON object per interval
    instead of a screen.
    """
    out = out or sys.stdout
    if keyboard == -1:
        keyboard = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    live = out.isatty() and not as_json
    frames = 0
    reason = "iterations"
    resized = [False]
    view = None
    if live:
        out.write(ALT_SCREEN_ON + CURSOR_HIDE)
        out.flush()

    def show() -> None:
        if as_json:
            out.write(json_line(view_json(view)) + "\n")
        elif live:
            columns, rows = terminal_size(out)
            draw(out, render(view, columns, rows)[:rows])
            return
        else:
            out.write("\n".join(render(view)) + "\n\n")
        out.flush()

    try:
        with _cbreak(keyboard), _on_resize(resized):
            before = obs.sample()
            while iterations is None or frames < iterations:
                deadline = clock() + interval
                key = ""
                while not key and (left := deadline - clock()) > 0:
                    key = _wait_for_key(keyboard, min(left, KEY_POLL))
                    if key and not any(k in key for k in QUIT_KEYS):
                        key = ""        # other keys: ignored
                    if resized[0] and view is not None:
                        resized[0] = False
                        show()          # the last figures, laid out for the new size
                if key:
                    reason = "q"
                    break
                if not obs.alive():
                    reason = "pipeline ended"
                    break
                after = obs.sample()
                view = compute_view(obs, before, after)
                before = after
                frames += 1
                show()
    except KeyboardInterrupt:
        reason = "ctrl-c"
    finally:
        if live:
            out.write(CURSOR_SHOW + ALT_SCREEN_OFF)
            out.flush()
    return reason
