"""Rewrite the source MAC of every frame and map VLAN ids, from the pipeline file's [workers.options].

    [workers]
    function = "examples/mac_vlan_rewrite.py:rewrite"
    [workers.options]
    src_mac = "02:00:00:00:00:fe"            # every frame leaves with this source MAC
    vlan_map = { "100" = 200, "101" = 201 }  # outer VLAN id -> new id (others unchanged)

``setup(ctx)`` turns the map into a 4096-entry lookup table once, so the
batch function is three vector operations: look up, compare, write where
changed (the setter keeps each tag's priority bits).
"""

import numpy as np

VLAN_IDS = 4096


def setup(ctx):
    lut = np.arange(VLAN_IDS, dtype=np.uint16)
    for old, new in ctx.options.get("vlan_map", {}).items():
        if not (0 <= int(old) < VLAN_IDS and 0 <= int(new) < VLAN_IDS):
            raise ValueError(f"vlan_map: {old} -> {new}: VLAN ids are 0..{VLAN_IDS - 1}")
        lut[int(old)] = int(new)
    ctx.state["lut"] = lut
    ctx.state["src_mac"] = ctx.options.get("src_mac")


def rewrite(batch):
    state = batch.ctx.state
    if state["src_mac"]:
        batch.set_src_mac(state["src_mac"])
    vid = batch.eth.vlan_id[:, 0]
    new = state["lut"][vid]
    changed = (batch.eth.vlans > 0) & (new != vid)
    batch.set_vlan_id(new, mask=changed)
    batch.count("vlan_rewritten", int(changed.sum()))
