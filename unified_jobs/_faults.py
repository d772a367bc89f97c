"""What a driver's exception says of its server: down, timed out, refusing the login, or (SQLite)
a file that cannot be opened. Recognised by module, class name and message, without importing
any driver, so both the command line and the queue kinds' health checks can ask."""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Iterator
from typing import Literal

__all__ = ["Fault", "fault_in", "library_of", "links"]

Fault = Literal["auth", "timeout", "down", "file"]

_AUTH_CLASSES = {
    "AuthenticationError",
    "AuthenticationWrongNumberOfArgsError",
    "AccessRefused",
    "AuthenticationFailed",
}
_AUTH_TEXT = re.compile(
    r"(?i)WRONGPASS|NOAUTH|invalid (username-)?password|password authentication failed|"
    r"authentication failed|ACCESS_REFUSED|no password supplied|authentication required|"
    r"password is required"
)
_AUTH_LIBRARIES = ("redis", "psycopg", "psycopg2", "amqp", "kombu")
_TIMEOUT_TEXT = re.compile(r"(?i)timed? ?out|timeout expired")
_DOWN_TEXT = re.compile(
    r"(?i)connection refused|could not connect|connection failed|connection to server|"
    r"failed to resolve host|name or service not known|temporary failure in name resolution|"
    r"no route to host|network is unreachable|connection reset|server closed the connection|"
    r"error \d+ connecting to|connecting to .* failed"
)
_SQLITE_TEXT = re.compile(
    r"(?i)unable to open database file|file is not a database|readonly database|disk i/o error|"
    r"database disk image is malformed"
)
_UNREACHABLE_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.ECONNABORTED,
}


def links(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps (a SQLAlchemy error's driver error) and its causes."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        for nxt in (orig, current.__cause__, current.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def library_of(exc: BaseException) -> str:
    return type(exc).__module__.split(".")[0]


def fault_of(exc: BaseException) -> Fault | None:
    """What ``exc`` itself says of the server, if it is a connection-level error."""
    library, name, text = library_of(exc), type(exc).__name__, str(exc)
    if library == "sqlite3":
        return "file" if _SQLITE_TEXT.search(text) else None
    if library == "sqlalchemy":
        # Its wrappers say what their driver error says (seen next in the chain); a SQLite
        # file is told by the text (the wrapper can come without the original attached).
        return "file" if _SQLITE_TEXT.search(text) and "sqlite" in text.lower() else None
    if name in _AUTH_CLASSES or (library in _AUTH_LIBRARIES and _AUTH_TEXT.search(text)):
        return "auth"
    if isinstance(exc, OSError) and library in ("builtins", "socket", "ssl"):
        if isinstance(exc, TimeoutError):
            return "timeout"
        if isinstance(exc, (ConnectionError, socket.gaierror)) or exc.errno in _UNREACHABLE_ERRNOS:
            return "down"
        return None
    if library == "redis":
        if "Timeout" in name:
            return "timeout"
        return "down" if name in ("ConnectionError", "BusyLoadingError") else None
    if library == "kombu":
        if name != "OperationalError":  # kombu raises it for connection errors only
            return None
        return "timeout" if _TIMEOUT_TEXT.search(text) else "down"
    if library == "amqp":
        if name in ("ConnectionForced", "RecoverableConnectionError", "AMQPConnectionError"):
            return "down"
        return None
    if library in ("psycopg", "psycopg2", "psycopg_pool"):
        if "Timeout" in name and name != "QueryCanceled":  # ConnectionTimeout, PoolTimeout
            return "timeout"
        if name != "OperationalError":  # its subclasses are about statements, not the server
            return None
        if _TIMEOUT_TEXT.search(text):
            return "timeout"
        return "down" if _DOWN_TEXT.search(text) else None
    return None


def fault_in(exc: BaseException) -> Fault | None:
    """The first fault ``exc`` or one of its causes says, or None."""
    for link in links(exc):
        fault = fault_of(link)
        if fault is not None:
            return fault
    return None
