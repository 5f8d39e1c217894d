"""Tests of deploy/: config that validates here, and references that exist."""

from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
