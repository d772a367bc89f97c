"""URIs in messages and logs never show a password."""

from __future__ import annotations

import re

__all__ = ["mask_uri"]

_USERINFO = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:@/]*)(?::(?P<pw>[^@/]*))?@")


def mask_uri(uri: str) -> str:
    """``redis://:secret@host/0`` -> ``redis://:***@host/0``; URIs without a password unchanged."""
    match = _USERINFO.match(uri)
    if match is None or match.group("pw") is None:
        return uri
    return f"{match.group('scheme')}{match.group('user')}:***@{uri[match.end() :]}"
