"""The software 82599: register file, DMA, wires, generator, sinks, and serving foreign driver processes.

It implements a device; the driver (``ixypipe.nic``) never imports it.
"""
