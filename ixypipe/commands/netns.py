"""``ixypipe netns up|down|status``: the two-host veth testbed of ixypipe.ops.netns, kept for an operator.

``up`` builds host A and host B (``ixyn-<name>-a`` / ``-b``, 10.77.0.1 and
.2 on their ``eth0``) and the namespace ``ixyn-<name>-w`` holding the two
outer veth ends ixypipe joins, writes a pipeline file for those interfaces
and prints the commands that use it; nothing is added to the root
namespace.  ``down`` removes a testbed (``--all``: every one), ``status``
lists them.  The logic lives in ixypipe.ops.netns; this module parses and
prints.
"""

from __future__ import annotations

import secrets

import click

from ixypipe.commands.options import CommandError, emit_json, wants_json
from ixypipe.ops import netns as testbeds


@click.group()
def netns() -> None:
    """A two-host test network in namespaces (needs root and iproute2)."""


@netns.command()
@click.option("--name", default=None, help="The testbed's name (1-16 letters, digits, '_'); default: random.")
def up(name: str | None) -> None:
    """Build a testbed that stays up; print its namespaces, addresses, pipeline file and commands."""
    name = name or f"tb{secrets.token_hex(3)}"
    try:
        state = testbeds.keep_testbed(name)
    except testbeds.NetnsError as exc:
        raise CommandError(str(exc)) from None
    commands = testbeds.usage_commands(state)
    if wants_json():
        emit_json({"type": "netns_up", **state, "status": "up", "commands": commands})
        return
    a, b = state["hosts"]["a"], state["hosts"]["b"]
    click.echo(f"testbed {name} is up (state: {state['state']})")
    for label, host in (("host A", a), ("host B", b)):
        click.echo(f"  {label}: namespace {host['netns']}, {host['interface']} {host['ip']}/24")
    click.echo(f"  wire:   namespace {state['wire']}, {a['outer']} (to A) and {b['outer']} (to B): ixypipe joins "
               "these")
    click.echo(f"  pipeline file: {state['pipeline']}")
    click.echo("")
    click.echo(f"  {commands['check']}")
    click.echo(f"  {commands['run']}      # until Ctrl-C")
    click.echo(f"  {commands['ping']}                             # in another shell")
    click.echo(f"  {commands['iperf3_server']} & {commands['iperf3_client']}")
    click.echo(f"  {commands['down']}")


@netns.command()
@click.argument("name", required=False)
@click.option("--all", "everything", is_flag=True, help="Remove every testbed.")
def down(name: str | None, everything: bool) -> None:
    """Remove testbed NAME (namespaces, links, pipeline file), or all with --all; forget those already gone.

    What runs in its namespaces (a pipeline) gets SIGTERM and 30 s to stop, then SIGKILL."""
    if bool(name) == everything:
        raise click.UsageError("give a testbed's NAME or --all (`ixypipe netns status` lists them)")
    try:
        chosen = testbeds.kept_testbeds() if everything else [testbeds.find_kept(name)]
        stale = [s for s in testbeds.kept_testbeds() if s["status"] == "gone" and s not in chosen]
        stopped = [pid for state in [*chosen, *stale] for pid in testbeds.remove_kept(state)]
    except testbeds.NetnsError as exc:
        raise CommandError(str(exc)) from None
    if wants_json():
        emit_json({"type": "netns_down", "removed": [s["name"] for s in chosen],
                   "forgotten": [s["name"] for s in stale], "stopped": stopped})
        return
    if stopped:
        click.echo(f"stopped {len(stopped)} process(es) running in the namespaces: {' '.join(map(str, stopped))}")
    for state in chosen:
        click.echo(f"removed testbed {state['name']} ({', '.join(state.get('namespaces', []))})"
                   if state["status"] != "gone" else f"forgot testbed {state['name']} (already gone)")
    for state in stale:
        click.echo(f"forgot testbed {state['name']} (its namespaces are gone)")
    if not chosen and not stale:
        click.echo("no testbeds")


@netns.command()
def status() -> None:
    """List the testbeds `ixypipe netns up` made: up, partial (some namespaces gone) or gone."""
    try:
        found = testbeds.kept_testbeds()
    except testbeds.NetnsError as exc:
        raise CommandError(str(exc)) from None
    if wants_json():
        emit_json({"type": "netns_status", "testbeds": found})
        return
    if not found:
        click.echo("no testbeds (`ixypipe netns up` makes one)")
    for state in found:
        if "error" in state:
            click.echo(f"{state['name']}: {state['error']} ({state['state']})")
            continue
        a, b = state["hosts"]["a"], state["hosts"]["b"]
        click.echo(f"{state['name']}: {state['status']}  A {a['netns']} {a['ip']}  B {b['netns']} {b['ip']}  "
                   f"wire {state['wire']} ({a['outer']}, {b['outer']})  pipeline {state['pipeline']}")
