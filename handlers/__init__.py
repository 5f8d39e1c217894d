"""Vendor commands. Importing this package fills ``worker.registry.registry``.

One sub-package per vendor: ``client.py`` (auth, transport, error mapping),
one module per group of commands, ``sandbox.py`` (the simulator).
"""

from handlers import peerly, pidj

__all__ = ["peerly", "pidj"]
