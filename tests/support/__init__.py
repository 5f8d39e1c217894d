"""Test helpers shipped with the project: a publisher, an event tap, a worker process."""
