"""A reflector: every packet goes back out of the port it came in on, source and destination MAC swapped.

Use it in a pipeline file:

    [workers]
    function = "examples/reflector.py:reflect"

This is the built-in ``macswap`` plus a different verdict: ``batch.send``
overrides the port's ``forward_to`` for the whole batch.
"""

from __future__ import annotations


def reflect(batch) -> None:
    dst, src = batch.dst_mac(), batch.src_mac()     # (n, 6) copies
    batch.set_dst_mac(src)
    batch.set_src_mac(dst)
    batch.send(batch.in_port)
