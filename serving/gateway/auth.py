"""API keys for the gateway: generated once, stored only as SHA-256, compared in constant time.

A client sends its key in the gRPC metadata `x-api-key: KEY` or `authorization: Bearer KEY`
(the scheme word is case-insensitive, as RFC 7235 says; the key is not). The key is used exactly
as received: no trimming, no case folding. A key that differs from a stored one in case or
whitespace hashes differently and is unknown, so a client cannot reach another client's budget,
or a fresh one, by altering its key. The key itself never reaches the store, the audit log, the
logs or the metrics; only its SHA-256 digest is kept, and the final comparison of the stored
digest with the received one goes through `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

__all__ = ["ANONYMOUS", "KEY_PREFIX", "digest_matches", "extract_key", "generate_key",
           "hash_key"]

ANONYMOUS = "anonymous"  # the client name of requests without a key (when auth is optional)
KEY_PREFIX = "mxk_"
_MAX_KEY_CHARS = 512


def generate_key() -> str:
    """A new random API key (256 bits of entropy, URL-safe characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest the store keeps instead of the key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def digest_matches(stored: str, received: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(stored.encode("ascii", "replace"),
                               received.encode("ascii", "replace"))


def extract_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The API key a request carries, or None (no key, an empty key, or an unusable header).

    `x-api-key` wins over `authorization`; `authorization` must read `Bearer <key>`.
    """
    api_key = bearer = None
    for name, value in metadata or ():
        if isinstance(value, bytes):  # a "-bin" header: never a key
            continue
        lowered = name.lower()
        if lowered == "x-api-key" and api_key is None:
            api_key = value
        elif lowered == "authorization" and bearer is None:
            scheme, sep, rest = value.partition(" ")
            if sep and scheme.lower() == "bearer":
                bearer = rest
    key = api_key if api_key is not None else bearer
    if not key or len(key) > _MAX_KEY_CHARS:
        return None
    return key
