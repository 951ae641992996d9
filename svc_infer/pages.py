"""Page sizes and opaque keyset page tokens for svc_infer's list RPCs.

A token is the sort key of the last item of the previous page (base64url JSON), tagged with
the list it belongs to, so a token from one list (or a tampered one) is INVALID_ARGUMENT
rather than a silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import json

from medmesh.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    """0 → 50, above 500 → 500, negative → INVALID_ARGUMENT."""
    if requested < 0:
        raise InvalidArgument.for_field("page_size", "must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(kind: str, key: list[str]) -> str:
    """The token that continues `kind` after the item whose sort key is `key`."""
    raw = json.dumps({"k": kind, "v": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(kind: str, token: str, arity: int) -> list[str] | None:
    """The sort key in `token` (None for the first page); INVALID_ARGUMENT when it is not a
    token of this list."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        document = json.loads(raw)
        key = document["v"]
        valid = (
            document["k"] == kind
            and isinstance(key, list)
            and len(key) == arity
            and all(isinstance(part, str) for part in key)
        )
    except (binascii.Error, ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise InvalidArgument.for_field("page_token", "is not a token from this list")
    return key
