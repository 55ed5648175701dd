"""``python -m ixypipe`` is the ``ixypipe`` command."""

from ixypipe.cli import main

main(prog_name="ixypipe")
