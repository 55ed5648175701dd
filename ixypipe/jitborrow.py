"""Borrowed arrays in compiled code: views of the caller's arrays that numba does not reference-count.

numba counts references to every array it gets from Python (a "meminfo"
per array) and adjusts the count, with an atomic instruction, wherever a
compiled function unpacks a tuple of arrays, slices one or passes one on to
another function it did not inline.  A stage's compiled loop (pipeline/
breathe_jit.py) hands about twenty arrays to each pass, so at ixy's batch of
32 these atomics were half of an RX stage's CPU (perf: NRT_incref/decref).
The software 82599's walks (sim/kernels.py) borrow theirs for the same reason.

``borrowed(value)`` returns ``value`` (an array, or a tuple of arrays and
tuples and scalars, nested) with every array's meminfo cleared: the same data,
shape and strides, and numba's count operations on it become a test for
NULL.  It is safe where the caller keeps the arrays alive for the whole call,
as the stage loops do (their arrays live in the stage's Python objects), and
only there: a borrowed array must never outlive the call (be returned to
Python or stored).  Arrays made inside compiled code keep their own count.
"""

from __future__ import annotations

from ixypipe import jitcache

numba = jitcache.load_numba()

AVAILABLE = numba is not None
borrowed = None

if AVAILABLE:
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    def _borrow(context, builder, ty, value):
        """``value`` of numba type ``ty`` with the meminfo of each array in it set to NULL."""
        if isinstance(ty, types.Array):
            array = context.make_array(ty)(context, builder, value=value)
            array.meminfo = cgutils.get_null_value(array.meminfo.type)
            return array._getvalue()
        if isinstance(ty, types.BaseTuple):
            for i, member in enumerate(ty):
                item = _borrow(context, builder, member, builder.extract_value(value, i))
                value = builder.insert_value(value, item, i)
        return value

    @intrinsic
    def borrowed(typingctx, value):
        def codegen(context, builder, signature, args):
            return _borrow(context, builder, signature.args[0], args[0])

        return value(value), codegen
