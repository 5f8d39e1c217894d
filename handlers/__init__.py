"""Vendor commands, and the composition root that names the vendors.

One sub-package per vendor: ``client.py`` (auth, transport, error mapping),
one module per group of commands, ``sandbox.py`` (the simulator); its
``__init__`` exports the one :class:`~worker.registry.Vendor` object.
``VENDORS`` lists them; :func:`build_registry` is what the CLI, the AsyncAPI
document and the publishing client build their registry from.
"""

from __future__ import annotations

from typing import Any

from handlers.peerly import PEERLY
from handlers.pidj import PIDJ
from worker.registry import Registry, Vendor

VENDORS: tuple[Vendor[Any], ...] = (PEERLY, PIDJ)


def build_registry() -> Registry:
    """A registry of every vendor in ``VENDORS``; a duplicate command type raises here."""
    return Registry(VENDORS)


__all__ = ["PEERLY", "PIDJ", "VENDORS", "build_registry"]
