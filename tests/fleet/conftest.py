"""Fleet tests: the Pidj simulator fixture shared with the runtime tests."""

from tests.runtime.conftest import pidj

__all__ = ["pidj"]
