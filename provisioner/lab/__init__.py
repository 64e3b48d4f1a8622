"""The local lab: throwaway Debian hosts (13, or 12) booting real systemd in systemd-nspawn.

A coop runs its services on a few Debian servers managed by Ansible over SSH. The lab gives
developers and the test suite the same thing on one machine, without VMs or Docker: each host
is an overlay of one cached debootstrap image, booted by ``systemd-nspawn`` inside its own
network namespace on a private bridge, reachable over SSH with a lab key. The contract it
implements (names, addresses, groups, state directory) is ``docs/lab-contract.md``.
"""

from __future__ import annotations

from provisioner.lab.config import LabConfig, LabError

__all__ = ["LabConfig", "LabError"]
