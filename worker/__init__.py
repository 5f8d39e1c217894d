"""Switchboard: a RabbitMQ worker that runs SMS vendor commands exactly once."""

__version__ = "0.1.0"
