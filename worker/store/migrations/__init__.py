"""Versioned schema migrations for the store backends that need them (PostgreSQL)."""
