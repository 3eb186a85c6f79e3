"""The host agent: runs the VMs of one host (or, simulated, of many) for the scheduler.

Pure core (no I/O, no asyncio, time as an input; an import-linter contract holds them to it):
``state`` (AgentState: lease, fencing, command admission, the heartbeat report), ``heldvms``
(its starts, stops and deletes, and the failed starts), ``stimuli`` (its inputs and
instructions), ``lease`` and ``report``.

Shell: ``agent`` (carries out the state's instructions on the driver), ``heartbeat`` (the single
agent's heartbeat loop), ``simpool`` (many simulated hosts in one process), ``app`` and
``__main__`` (wiring), ``fencing``/``fenceguard`` (the out-of-process fence guard, with
``leasefile`` and ``guardvms``), ``capture``, ``disks``, ``images``, ``inventory``, ``accel``,
``qemusetup``, ``execlog`` and ``drivers/``.
"""
