"""The errors a command can end with, and how the runtime treats each.

::

    SwitchboardError
    ├── CommandRejected          the message is not a valid command      -> <type>.rejected
    │   └── InvalidPayload       a payload field breaks a rule (has a JSON path)
    ├── PermanentError           valid, but cannot be done; never retried -> <type>.failed
    │   ├── VendorRejected       the vendor refused (4xx, ``status: failure``)
    │   ├── VendorAuthFailed     credentials refused even after a refresh
    │   └── OutcomeUnknown       the vendor may or may not have acted
    └── TransientError           may work later; retried with backoff     -> retry, then failed
        ├── RateLimited          429, or our own limiter; honours retry_after
        └── VendorUnavailable    connection error, timeout, 5xx

``TransientError.maybe_applied`` says whether the vendor could have acted
before the error (a timeout after the request was sent, a 500). The runtime
retries such an error only for commands whose side effect is safe to repeat;
for the others it ends the command with ``outcome_unknown`` rather than risk a
second text.

Handlers raise these; they never decide about retries, acks or events.
``rejected`` is only for what is found before a command is claimed (the
envelope, the schema, ``check``): a ``CommandRejected`` raised by a handler
ends the command ``failed`` with its code and details kept, and is stored.
"""

from __future__ import annotations

from typing import Any


class SwitchboardError(Exception):
    """Base of every error a handler or the runtime raises on purpose."""

    code: str = "error"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = details or {}

    def as_event_error(self) -> dict[str, Any]:
        """The ``error`` object of an event: no credentials, no stack."""
        return {
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
            "details": self.details,
        }


class CommandRejected(SwitchboardError):
    """The message is not a valid command (bad JSON, schema, unknown type)."""

    code = "invalid_command"


class InvalidPayload(CommandRejected):
    """One payload field breaks a rule; ``path`` is its JSON pointer."""

    code = "invalid_payload"

    def __init__(self, message: str, *, path: str = "/payload", code: str | None = None) -> None:
        super().__init__(message, code=code, details={"path": path})
        self.path = path


class PermanentError(SwitchboardError):
    """The command was valid but cannot be done; repeating it will not help."""

    code = "permanent_error"


class VendorRejected(PermanentError):
    """The vendor refused the request (4xx, or a body that says failure)."""

    code = "vendor_rejected"


class VendorAuthFailed(PermanentError):
    """The vendor refused our credentials, also after one refresh."""

    code = "vendor_auth_failed"


class OutcomeUnknown(PermanentError):
    """The vendor may have acted; the publisher has to reconcile."""

    code = "outcome_unknown"


class TransientError(SwitchboardError):
    """May work on a later attempt."""

    code = "transient_error"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
        maybe_applied: bool = False,
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.retry_after = retry_after
        self.maybe_applied = maybe_applied


class RateLimited(TransientError):
    """Too many requests; ``retry_after`` seconds is the vendor's own hint."""

    code = "rate_limited"


class VendorUnavailable(TransientError):
    """Connection error, timeout or 5xx from the vendor."""

    code = "vendor_unavailable"
