"""A queue server that is down, slow or refuses: one clear line, not a driver's traceback.

``server_fault`` looks at an exception (and its causes) raised while a command talked to the
queue's server. When it is a connection refused, a timeout, an authentication failure, or a
SQLite file that cannot be opened, it returns a ``ServerUnavailableError`` naming the server
(password masked) and what to check. The CLI cannot import the drivers (only ``adapters/``
does), so their exceptions are recognised by module, class name and message.
"""

from __future__ import annotations

from unified_jobs._faults import Fault, fault_of, library_of, links
from unified_jobs._uri import mask_text, mask_uri, password_pieces, unencoded_in_password, uri_secrets
from unified_jobs.config import QueueConfig
from unified_jobs.errors import UnifiedJobsError

__all__ = ["ServerUnavailableError", "app_load_error", "encoding_hint", "mask_for_queue", "server_fault"]


class ServerUnavailableError(UnifiedJobsError):
    """The queue's server (or the job store's) is down, did not answer, or refused the login."""


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return line.rstrip(".")


def mask_for_queue(text: str, queue: QueueConfig) -> str:
    """``text`` with the passwords of the queue's URIs masked, however they show up."""
    uris = [queue.uri, *([queue.store_uri] if queue.store_uri else [])]
    secrets = [s for uri in uris for s in uri_secrets(uri)]
    pieces = [p for uri in uris for p in password_pieces(uri)]
    return mask_text(text, secrets, pieces)


def encoding_hint(uri: str, key: str) -> str:
    """``"; the password in queue.uri has a bare '/' ..."`` when it has one, else ``""``."""
    bare = unencoded_in_password(uri)
    if not bare:
        return ""
    codes = " and ".join(f"'{c}' as %{ord(c):02X}" for c in bare)
    plural = "s" if len(bare) > 1 else ""
    return (
        f"; the password in {key} has a bare {' and '.join(repr(c) for c in bare)}, which drivers "
        f"read as the end of the password or of the host: percent-encode the character{plural} "
        f"({codes})"
    )


def server_fault(exc: BaseException, queue: QueueConfig) -> ServerUnavailableError | None:
    """One clear error for ``exc`` if it says the server is down, slow or refused; else None."""
    found: tuple[Fault, BaseException] | None = None
    from_redis = False
    for link in links(exc):
        fault = fault_of(link)
        from_redis = from_redis or library_of(link) == "redis"
        if fault is not None and (found is None or (found[0] == "down" and fault != "down")):
            found = (fault, link)  # auth and timeout say more than the "down" wrapped around them
    if found is None:
        return None
    fault, cause = found
    detail = _first_line(cause)
    on_store = queue.kind == "RabbitMQ" and queue.store_uri is not None and from_redis
    uri, key = (queue.store_uri or "", "queue.store_uri") if on_store else (queue.uri, "queue.uri")
    server = {
        "Redis": "Redis server",
        "Postgres": "PostgreSQL server",
        "Sqlite": "SQLite database",
        "RabbitMQ": "RabbitMQ broker",
    }.get(queue.kind, f"{queue.kind} server")
    if on_store:
        server = "Redis job store (queue.store_uri)"
    where = f"the {server} at {mask_uri(uri)}"
    if fault == "auth":
        message = (
            f"{where} refused the login: {detail}; check the user name and password in {key} "
            "(and that this user may use that database or vhost)"
        )
    elif fault == "timeout":
        message = (
            f"{where} did not answer in time: {detail}; check that it is running and reachable "
            f"from here (host, port, firewall) at the address in {key}"
        )
    elif fault == "file":
        message = (
            f"cannot open {where}: {detail}; check that the file's folder exists and that this "
            f"user may read and write the file and its folder ({key})"
        )
    else:
        message = (
            f"cannot reach {where}: {detail}; check that it is running and that {key} has its "
            "host and port right"
        )
    message += encoding_hint(uri, key)
    return ServerUnavailableError(mask_for_queue(message, queue))


def _config_queue() -> QueueConfig | None:
    """The queue section of the config file in force, if it loads (for masking only)."""
    from unified_jobs.config import load_config

    try:
        return load_config().queue
    except Exception:  # the config has its own errors; they are not this message's
        return None


def app_load_error(spec: str, exc: BaseException, queue: QueueConfig | None = None) -> UnifiedJobsError:
    """``cannot load SPEC: <type>: <message>``, the queue's passwords masked (``queue``, else the
    config file's), and the percent-encoding hint when a URI's password needs it."""
    queue = queue or _config_queue()
    detail = str(exc) if isinstance(exc, UnifiedJobsError) else f"{type(exc).__name__}: {exc}"
    message = f"cannot load {spec}: {detail}"
    if queue is None:
        return UnifiedJobsError(mask_text(message))
    message += encoding_hint(queue.uri, "queue.uri")
    if queue.store_uri:
        message += encoding_hint(queue.store_uri, "queue.store_uri")
    return UnifiedJobsError(mask_for_queue(message, queue))
