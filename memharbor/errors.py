"""The domain's refusals, free of any transport: token_http/errors.py maps each to its HTTP status once.

`field` names the document or request field at fault, when there is one.
"""

from __future__ import annotations


class DomainError(Exception):
    """An operation the domain refuses; `field` names the input at fault when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(DomainError):
    """A value breaks the data contract (a bad id, a name too long)."""


class NotFound(DomainError):
    """The document the operation needs does not exist."""


class Forbidden(DomainError):
    """The actor may not do this (not a group member, not this actor's move)."""


class IllegalTransition(DomainError):
    """The state machine has no move from the document's current status to the one asked for."""


class Conflict(DomainError):
    """A document with this id already exists."""


class Unavailable(Exception):
    """Firestore did not answer (down, timed out, or too contended to commit)."""
