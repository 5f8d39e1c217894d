"""What to do after a transient error: wait and retry, or give up.

Backoff is exponential with full jitter (a uniform draw between 0 and
``base * 2**(attempt-1)``, capped), and never shorter than the vendor's
``Retry-After``. The wait itself happens in a broker delay queue.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from worker.errors import OutcomeUnknown, PermanentError, TransientError


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    max_age_seconds: float = 24 * 3600.0
    base_seconds: float = 1.0
    cap_seconds: float = 600.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter delay before attempt ``attempt + 1``."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempt - 1))
        return (rng or random).uniform(0, ceiling)


@dataclass(frozen=True, slots=True)
class Retry:
    """Run the command again after ``delay_seconds`` (a decision the dispatcher's executor carries out)."""

    delay_seconds: float
    error: TransientError | None = None
    """The error that is retried: its code labels the retry metric and the log line."""


def decide(
    error: TransientError,
    *,
    attempts: int,
    age_seconds: float,
    safe_to_repeat: bool,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> Retry | PermanentError:
    """Retry after a delay, or the permanent error that ends the command."""
    if error.maybe_applied and not safe_to_repeat:
        return OutcomeUnknown(
            f"the vendor may have acted before failing ({error.message}); not retried, to avoid doing it twice",
            details={"cause": error.as_event_error()},
        )
    if attempts >= policy.max_attempts:
        return _gave_up(error, f"gave up after {attempts} attempts", attempts)
    delay = max(policy.backoff(attempts, rng), error.retry_after or 0.0)
    if age_seconds + delay > policy.max_age_seconds:
        return _gave_up(error, f"gave up: older than {policy.max_age_seconds:.0f}s", attempts)
    return Retry(delay, error)


def _gave_up(error: TransientError, why: str, attempts: int) -> PermanentError:
    final = PermanentError(
        f"{why}; last error: {error.message}", code=error.code, details=dict(error.details)
    )
    final.details["attempts"] = attempts
    final.details["gave_up"] = True
    return final
