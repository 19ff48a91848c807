"""Keyed hashes for identifiers: outputs carry HMAC-SHA-256 values, never raw ids."""

from __future__ import annotations

import hashlib
import hmac

DEFAULT_SALT = "medprep-default-salt"  # not secret: pass --split_salt or MEDPREP_SALT for real data


def keyed_hash(salt: str, kind: str, value: str) -> str:
    """HMAC-SHA-256(salt, kind + ':' + value) as 64 hex chars; '' for an empty value."""
    if not value:
        return ""
    return hmac.new(salt.encode("utf-8"), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def unit_interval(key_hex: str) -> float:
    """A hex digest -> a float in [0, 1), uniform over keys."""
    return int(key_hex[:15], 16) / float(1 << 60)
