"""Bounded retries: how many attempts, how long in all, and which failures
allow another attempt without duplicating a write. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ClientError, Indeterminate

ATTEMPT_S_MIN = 0.05  # do not start an attempt with less time left than this


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying one logical request: attempts and a total deadline."""

    attempts_max: int = 5
    deadline_s: float = 20.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    retry_after_max_s: float = 1.0  # honour the server's Retry-After, up to this

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise ValueError("RetryPolicy.attempts_max must be at least 1")
        if self.deadline_s < ATTEMPT_S_MIN:
            raise ValueError(f"RetryPolicy.deadline_s must be at least {ATTEMPT_S_MIN} s")
        if not 0 <= self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("RetryPolicy: need 0 <= backoff_initial_s <= backoff_max_s")
        if self.retry_after_max_s < 0:
            raise ValueError("RetryPolicy.retry_after_max_s must not be negative")

    def delay_s(self, attempt: int, error: ClientError, jitter: float) -> float:
        """Pause before attempt `attempt + 1`; `jitter` in [0, 1) spreads clients apart."""
        backoff = min(self.backoff_max_s, self.backoff_initial_s * 2.0**attempt)
        delay = backoff * (0.5 + jitter / 2)
        if error.retry_after_s is not None:
            delay = max(delay, min(error.retry_after_s, self.retry_after_max_s))
        return delay


NO_RETRY = RetryPolicy(attempts_max=1)


def may_retry(error: ClientError, is_write: bool, keyed: bool) -> bool:
    """Whether `error` on one attempt allows another. A write is retried only with an
    Idempotency-Key, which makes even a lost or indeterminate attempt safe to repeat."""
    if is_write:
        return keyed and (error.retryable or isinstance(error, Indeterminate))
    return error.retryable
