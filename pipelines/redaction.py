"""Dropping what looks like a credential from a JSON-able value before it is stored or shown.

Keys that look like credentials (token, password, secret, authorization, ...) are dropped at any
depth, and the password of a URL (``scheme://user:pw@host``) is masked. Used by the audit trail
(:mod:`pipelines.audit`) and the trigger classifier (:mod:`pipelines.triggers`); imports nothing
of the project, so either may import it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_SECRET_KEY = re.compile(
    r"token|password|passwd|secret|authorization|credential|api[_-]?key|private[_-]?key", re.IGNORECASE
)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")


def scrub(value: Any) -> Any:
    """``value`` without what looks like a credential: secret-named keys go, URL passwords are masked."""
    if isinstance(value, Mapping):
        return {str(k): scrub(v) for k, v in value.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\g<head>:***@", value)
    return value
