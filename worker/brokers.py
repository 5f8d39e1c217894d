"""Broker addresses: ``SWITCHBOARD_AMQP_URL`` may name every node of a cluster.

::

    SWITCHBOARD_AMQP_URL=amqp://user:secret@rabbit-0:5672/switchboard,rabbit-1:5672,rabbit-2:5672

Entries are separated by commas. A full URL stands on its own; an entry with
no ``scheme://`` (``host`` or ``host:port``) borrows the first URL's scheme,
credentials, vhost and options, so the secret is written once. One URL, as
before, is a list of one.

Every client tries the nodes in random order (so a fleet spreads over the
cluster instead of piling on the first node) and, after losing a connection,
tries the node it was on last, so it moves to a node that is still up.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import pika


class BrokerURLError(ValueError):
    """``SWITCHBOARD_AMQP_URL`` names no usable broker."""


def broker_urls(setting: str) -> list[str]:
    """The broker URLs in ``setting`` (comma-separated), each complete."""
    entries = [entry.strip() for entry in setting.split(",") if entry.strip()]
    if not entries:
        raise BrokerURLError("no broker address given")
    first = urlsplit(entries[0])
    if not first.scheme or not first.hostname:
        raise BrokerURLError("the first broker address must be a full amqp:// or amqps:// URL")
    urls = []
    for entry in entries:
        if "://" in entry:
            urls.append(entry)
            continue
        credentials = first.netloc.rpartition("@")[0]
        netloc = f"{credentials}@{entry}" if credentials else entry
        urls.append(urlunsplit((first.scheme, netloc, first.path, first.query, first.fragment)))
    return urls


def address(url: str) -> str:
    """``host:port`` of a URL: what logs and errors may show (never the credentials)."""
    parts = urlsplit(url)
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    return f"{parts.hostname}:{port}"


def connection_order(urls: Sequence[str], *, last: str | None = None) -> list[str]:
    """Random order; the node we were just on (``last``) goes last."""
    order = list(urls)
    random.shuffle(order)
    if last is not None and last in order and len(order) > 1:
        order.remove(last)
        order.append(last)
    return order


def blocking_connection(setting: str, **overrides: object) -> pika.BlockingConnection:
    """A blocking pika connection to one node that answers (random order).

    pika tries a list of parameters in order and raises the last error when
    none answers.
    """
    parameters = []
    for url in connection_order(broker_urls(setting)):
        params = pika.URLParameters(url)
        for name, value in overrides.items():
            setattr(params, name, value)
        parameters.append(params)
    return pika.BlockingConnection(parameters)
