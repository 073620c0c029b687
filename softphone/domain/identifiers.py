"""Validation of room names and participant identities.

Checked before any call leaves the process, so a bad name gets a clear error
naming the field instead of an opaque server failure.
"""

from __future__ import annotations

import re

from softphone.errors import ValidationError

MAX_NAME_LENGTH = 128
_ROOM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IDENTITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+:-]*$")


def _check(value: object, field: str, pattern: re.Pattern[str], allowed: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, "must be text")
    if not value:
        raise ValidationError(field, "must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ValidationError(field, f"must be at most {MAX_NAME_LENGTH} characters")
    if not pattern.fullmatch(value):
        raise ValidationError(
            field, f"may contain only {allowed}, and must start with one of the first two"
        )
    return value


def validate_room_name(name: object, field: str = "room") -> str:
    """Return ``name`` if it is a valid room name, else raise.

    Room names are 1-128 characters of letters, digits, ``_``, ``.`` and ``-``,
    starting with a letter or digit.

    Raises:
        ValidationError: The name is empty, too long or has other characters.
    """
    return _check(name, field, _ROOM_RE, "letters, digits, '_', '.', '-'")


def validate_identity(identity: object, field: str = "identity") -> str:
    """Return ``identity`` if it is a valid participant identity, else raise.

    Identities are 1-128 characters of letters, digits and ``_ . @ + : -``,
    starting with a letter or digit (so phone numbers such as ``+4930...`` are
    written ``tel:+4930...``).

    Raises:
        ValidationError: The identity is empty, too long or has other characters.
    """
    return _check(identity, field, _IDENTITY_RE, "letters, digits, '_', '.', '@', '+', ':', '-'")
