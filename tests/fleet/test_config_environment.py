"""Unknown ``SWITCHBOARD_*`` variables stop the worker; every name the repo uses is still accepted."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from handlers import build_registry
from tests.support.worker import REPO, SWITCHBOARD
from worker.config import TOOLING_PREFIXES, ConfigError, Settings, check_environment, valid_names

registry = build_registry()

NAME = re.compile(r"\bSWITCHBOARD_[A-Z0-9_]*[A-Z0-9]\b")
SCANNED = ("Makefile", "README.md", "deploy", "docs", "tests", "bench", ".ci", "handlers", "worker")


def test_mistyped_variable_names_the_nearest_setting() -> None:
    """SWITCHBOARD_MAX_INFLIGHT is refused with one line naming SWITCHBOARD_MAX_IN_FLIGHT."""
    with pytest.raises(ConfigError) as raised:
        check_environment(registry, {"SWITCHBOARD_MAX_INFLIGHT": "999", "SWITCHBOARD_VENDORS": "pidj"})
    assert raised.value.lines == [
        "SWITCHBOARD_MAX_INFLIGHT is not a Switchboard setting; did you mean SWITCHBOARD_MAX_IN_FLIGHT?"
    ]


def test_vendor_account_fields_and_tooling_names_are_accepted() -> None:
    """Names derived from each vendor's account model, and test/bench/drill names, pass the check."""
    env = {
        "SWITCHBOARD_PIDJ_ACCOUNT_KEY": "k",
        "SWITCHBOARD_PEERLY_RATE_LIMIT_PER_SECOND": "5",
        "SWITCHBOARD_PIDJ_SENDING_WINDOW": "08:00-21:00",
        "SWITCHBOARD_TEST_AMQP_URL": "amqp://",
        "SWITCHBOARD_DRILL_STORE": "sqlite",
        "PATH": "/usr/bin",
    }
    check_environment(registry, env)
    for vendor, spec in registry.vendors.items():
        for field in spec.account_model.model_fields:
            assert f"SWITCHBOARD_{vendor.upper()}_{field.upper()}" in valid_names(registry)


def test_a_vendor_field_typo_is_caught() -> None:
    """A misspelt vendor credential names the real one instead of leaving the account incomplete."""
    with pytest.raises(ConfigError) as raised:
        check_environment(registry, {"SWITCHBOARD_PIDJ_ACOUNT_KEY": "k"})
    assert raised.value.lines[0].endswith("did you mean SWITCHBOARD_PIDJ_ACCOUNT_KEY?")


def test_every_name_used_in_the_repository_is_valid() -> None:
    """Every SWITCHBOARD_* name in Makefile, deploy, docs, tests, bench and .ci is a setting or tooling."""
    valid = valid_names(registry)
    unknown: dict[str, str] = {}
    for top in SCANNED:
        root = REPO / top
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in paths:
            if "__pycache__" in path.parts or path.suffix in (".pyc", ".sqlite3"):
                continue
            try:
                text = path.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            for name in NAME.findall(text):
                prefix_only = any(name + "_" == f"SWITCHBOARD_{v.upper()}_" for v in registry.vendors)
                if name in valid or name.startswith(TOOLING_PREFIXES) or prefix_only:
                    continue
                unknown.setdefault(name, str(path.relative_to(REPO)))
    # Names that are deliberately wrong, to show the check.
    unknown.pop("SWITCHBOARD_MAX_INFLIGHT", None)
    unknown.pop("SWITCHBOARD_PIDJ_ACOUNT_KEY", None)
    unknown.pop("SWITCHBOARD_QUEUES_PREFIX", None)  # a Python constant in tests/conftest.py, no variable
    assert unknown == {}


def test_the_worker_exits_at_start_on_an_unknown_variable(tmp_path: Path) -> None:
    """`switchboard run` with a mistyped variable exits 2 before connecting, with one clear line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        {
            "SWITCHBOARD_MAX_INFLIGHT": "999",
            "SWITCHBOARD_STORE_URL": f"sqlite:///{tmp_path}/store.sqlite3",
            "SWITCHBOARD_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F",  # never reached
        }
    )
    result = subprocess.run([str(SWITCHBOARD), "run"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("config error:")]
    assert errors == [
        "config error: SWITCHBOARD_MAX_INFLIGHT is not a Switchboard setting;"
        " did you mean SWITCHBOARD_MAX_IN_FLIGHT?"
    ]


def test_new_settings_have_their_variables() -> None:
    """The pool size, statement cache, unshared-store switch and pause cap are settings."""
    settings = Settings(
        **{
            "postgres_pool_size": "5",
            "postgres_statement_cache_size": "0",
            "allow_unshared_store": "true",
            "pause_max_defer_seconds": "30",
        }
    )
    assert (settings.postgres_pool_size, settings.postgres_statement_cache_size) == (5, 0)
    assert settings.allow_unshared_store is True
    assert settings.pause_max_defer_seconds == 30


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite://", "sqlite:// needs a file path"),
        ("postgressql://u@db/sb", "unsupported store postgressql://"),
        ("var/switchboard.sqlite3", "unsupported store (no scheme://)"),
    ],
)
def test_a_store_url_that_would_fall_back_is_refused(url: str, says: str) -> None:
    """A store URL with no file path (an in-memory store) or an unknown scheme is a config error, not a start."""
    with pytest.raises(ValidationError) as raised:
        Settings(store_url=url)
    (message,) = [error["msg"] for error in raised.value.errors()]  # what `config error:` prints
    assert says in message
    assert "u@db" not in message, "the URL (it may hold a password) is echoed"
