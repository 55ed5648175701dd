"""ixypipe: a user-space 82599 (ixgbe) data plane in Python, after ixy."""

__version__ = "0.1.0"
