"""One module per ``ixypipe`` sub-command; see ixypipe/cli.py for the list."""
