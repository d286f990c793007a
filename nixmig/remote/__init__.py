"""Transports: run commands and move bytes on a target, locally or over SSH.

Phases talk to :class:`~nixmig.remote.base.Transport` only; paramiko is
imported in :mod:`nixmig.remote.ssh` and nowhere else.
"""
