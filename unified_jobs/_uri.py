"""URIs in messages and logs never show a password.

``mask_uri`` masks one URI (or a ``;`` list of them, as Celery takes), ``mask_text`` every URI
found in a message of any library, plus the passwords it is told of. A password is masked
whether or not it is percent-encoded: one written with a bare ``@`` or ``/``
(``redis://:pa/ss@word@host/0``) ends at the ``@`` before the host, and ``password=`` query
parameters (any case, any ``..._password``) are masked too. When a URI is ambiguous the
mask takes too much rather than too little.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

__all__ = ["mask_text", "mask_uri", "password_pieces", "unencoded_in_password", "uri_secrets"]

MASK = "***"

_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*://")
# A URI in free text: from its scheme to the next blank or quote.
_URI_IN_TEXT = re.compile(r"(?<![a-zA-Z0-9+.\-])[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"`<>]*")
# ``;`` between two URIs of a list (``redis://a;redis://b``), not one inside a password.
_LIST_SEPARATOR = re.compile(r"(;\s*)(?=[a-zA-Z][a-zA-Z0-9+.\-]*://)")
# ``?password=...``, ``&sslpassword=...``, ``;PWD=...``: the value up to the next parameter.
_QUERY_SECRET = re.compile(r"(?i)([?&;][^=&;#?\s]*(?:password|passwd|pwd)=)([^&;#\s]*)")
# Short secrets are masked only where they stand alone, not inside longer words.
_SHORT_SECRET = 4


def _password_span(uri: str) -> tuple[int, int] | None:
    """Where the password of ``scheme://user:password@host`` is in ``uri`` (start, end)."""
    scheme = _SCHEME.match(uri)
    if scheme is None:
        return None
    start = scheme.end()
    colon = uri.find(":", start)
    if colon < 0:
        return None
    user = uri[start:colon]
    if any(c in user for c in "/?#") or any(c.isspace() for c in user):
        return None  # no userinfo: a path (sqlite:///a:b@c) or the host's port comes first
    ats = [i for i in range(colon + 1, len(uri)) if uri[i] == "@"]
    if not ats:
        return None  # redis://host:6379/0, or user@host:port without a password
    # The password ends at the last "@" before the query; a "?" or "#" with no "@" before it
    # is inside the password, which then ends at the last "@" of all.
    query = min((i for i in (uri.find("?", colon), uri.find("#", colon)) if i >= 0), default=len(uri))
    before_query = [i for i in ats if i < query]
    end = before_query[-1] if before_query else ats[-1]
    if "@" in user and not before_query:
        return None
    return colon + 1, end


def _mask_one(uri: str) -> str:
    span = _password_span(uri)
    if span is not None:
        uri = f"{uri[: span[0]]}{MASK}{uri[span[1] :]}"
    return _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, uri)


def mask_uri(uri: str) -> str:
    """``redis://:secret@host/0`` -> ``redis://:***@host/0``; URIs without a password unchanged.

    Also ``redis://:pa/ss@word@host/0`` (a bare ``/`` or ``@`` in the password), ``...?password=x``
    (and ``&password=``, any case), and each URI of a ``;``-separated list.
    """
    parts = _LIST_SEPARATOR.split(uri)
    # split() keeps the separators at the odd positions
    return "".join(part if i % 2 else _mask_one(part) for i, part in enumerate(parts))


def uri_secrets(uri: str) -> list[str]:
    """The password of ``uri`` (of each URI of a ``;`` list) as written and percent-decoded,
    and the ``password=`` values of its query."""
    found: list[str] = []
    for part in _LIST_SEPARATOR.split(uri)[::2]:
        span = _password_span(part)
        values = [part[span[0] : span[1]]] if span is not None else []
        values += [m.group(2) for m in _QUERY_SECRET.finditer(part)]
        found += [form for value in values for form in (value, unquote(value)) if form and form != MASK]
    return list(dict.fromkeys(found))


def password_pieces(uri: str) -> list[str]:
    """When the password of ``uri`` holds a bare ``@``, ``/``, ``:``, ``?`` or ``#``: its pieces
    between them, which a driver may take for a host, port or path and print in its errors."""
    found: list[str] = []
    for part in _LIST_SEPARATOR.split(uri)[::2]:
        span = _password_span(part)
        if span is not None:
            pieces = [p for p in re.split(r"[@/:?#]", part[span[0] : span[1]]) if p]
            found += pieces if len(pieces) > 1 else []
    return list(dict.fromkeys(found))


def unencoded_in_password(uri: str) -> str:
    """The characters of the password of ``uri`` that must be percent-encoded and are not
    (``@`` and ``/``, which drivers read as the end of the password or of the host), e.g. ``"/@"``;
    empty when there are none."""
    found = ""
    for part in _LIST_SEPARATOR.split(uri)[::2]:
        span = _password_span(part)
        if span is not None:
            found += "".join(c for c in "@/" if c in part[span[0] : span[1]] and c not in found)
    return found


def mask_text(text: str, secrets: Iterable[str] = (), words: Iterable[str] = ()) -> str:
    """``text`` with the password of every URI in it, each of ``secrets`` and each of ``words``
    masked. A word (see ``password_pieces``), or a secret shorter than 4 characters, is masked
    only where it stands alone, not inside a longer word.
    """
    anywhere = sorted({s for s in secrets if len(s) >= _SHORT_SECRET and s != MASK}, key=len, reverse=True)
    alone = sorted({w for w in (*secrets, *words) if w and w != MASK} - set(anywhere), key=len, reverse=True)

    def known(part: str) -> str:
        for secret in anywhere:
            part = part.replace(secret, MASK)
        for word in alone:
            part = re.sub(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", MASK, part)
        return part

    def uri(match: re.Match[str]) -> str:
        # The user name before a masked password stays (guest:guest shows as guest:***).
        head, sep, tail = mask_uri(match.group(0)).partition(f":{MASK}@")
        return f"{head}{sep}{known(tail)}" if sep else known(head)

    out, last = [], 0
    for match in _URI_IN_TEXT.finditer(text):
        out += [known(text[last : match.start()]), uri(match)]
        last = match.end()
    return "".join([*out, known(text[last:])])
