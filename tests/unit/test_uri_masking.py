"""``unified_jobs._uri``: a password never shows, whatever shape its URI has."""

from __future__ import annotations

import pytest

from unified_jobs._uri import mask_text, mask_uri, password_pieces, unencoded_in_password, uri_secrets
from unified_jobs.cli.doctor import DoctorReport


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        # the plain shapes
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql://app:secret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
        ("redis://:p%2Fss%40w@host/0", "redis://:***@host/0"),  # percent-encoded
        ("redis://:@host/0", "redis://:***@host/0"),
        # a bare "/" or "@" in the password: the password ends at the "@" before the host
        ("redis://:pa/ss@word@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql://u:p@ss/w@host/db", "postgresql://u:***@host/db"),
        ("redis://:a@b@c@host/0", "redis://:***@host/0"),
        ("redis://:pa?ss@host/0", "redis://:***@host/0"),  # a "?" with no "@" before it
        ("amqp://u:p@host/vhost?name=a@b", "amqp://u:***@host/vhost?name=a@b"),  # "@" in the query
        ("amqp://me@example.com:pw@host//", "amqp://me@example.com:***@host//"),  # "@" in the user
        # a password as a query parameter, any case, any position
        ("redis://host:6379/0?password=secret", "redis://host:6379/0?password=***"),
        ("redis://host/0?db=1&password=secret&x=1", "redis://host/0?db=1&password=***&x=1"),
        ("redis://host/0?PassWord=secret#frag", "redis://host/0?PassWord=***#frag"),
        ("postgresql://db/app?sslpassword=secret", "postgresql://db/app?sslpassword=***"),
        ("redis://:one@host/0?password=two", "redis://:***@host/0?password=***"),
        # a Celery list of URIs: each one
        ("redis://:a1@h1/0;redis://:b2@h2/0", "redis://:***@h1/0;redis://:***@h2/0"),
        ("redis://:pa;ss@host/0", "redis://:***@host/0"),  # a ";" inside a password
    ],
)
def test_mask_uri_masks_every_shape_of_password(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


@pytest.mark.parametrize(
    "uri",
    [
        "redis://host:6379/0",
        "redis://user@host:6379/0",
        "sqlite:///jobs.db",
        "sqlite:////var/lib/app/a:b@c.db",  # a ":" and an "@" in a path are no password
        "sqlite:///C:/data/jobs@2.db",
        "postgresql://db/app?sslmode=require",
        "not a uri at all",
    ],
)
def test_uris_without_a_password_are_unchanged(uri: str) -> None:
    assert mask_uri(uri) == uri


def test_mask_text_masks_uris_inside_messages_of_other_libraries() -> None:
    text = "queue.uri: Input should be a valid string (got ['redis://:s3cret@h/0', \"amqp://u:pw@h//\"])"
    assert mask_text(text) == (
        "queue.uri: Input should be a valid string (got ['redis://:***@h/0', \"amqp://u:***@h//\"])"
    )
    bare = "redis://:pa/ss@word@127.0.0.1:6379/0"
    line = f"Redis at {bare}: cannot set up a connection: Port could not be cast to integer value as 'pa'"
    assert mask_text(line, uri_secrets(bare), password_pieces(bare)) == (
        "Redis at redis://:***@127.0.0.1:6379/0: cannot set up a connection: Port could not be cast "
        "to integer value as '***'"
    )


def test_secrets_pieces_and_bare_characters() -> None:
    assert uri_secrets("redis://:p%40ss@h/0?password=x%2Fy") == ["p%40ss", "p@ss", "x%2Fy", "x/y"]
    assert password_pieces("postgresql://u:p@ss/w@host/db") == ["p", "ss", "w"]
    assert password_pieces("redis://:secret@h/0") == []  # one piece: the password itself
    assert unencoded_in_password("postgresql://u:p@ss/w@host/db") == "@/"
    assert unencoded_in_password("redis://:pa/ss@h/0") == "/"
    assert unencoded_in_password("redis://:p%2Fss@h/0") == ""


def test_a_secret_is_masked_anywhere_and_a_short_one_only_where_it_stands_alone() -> None:
    assert mask_text("AUTH s3cret failed (s3cret)", ["s3cret"]) == "AUTH *** failed (***)"
    # A one-letter password must not eat every "p" of the message (it did: "***ostgresql").
    assert mask_text("postgresql://postgres:***@db/app: host 'p' unknown", ["p"]) == (
        "postgresql://postgres:***@db/app: host '***' unknown"
    )
    # The user name before a masked password stays, even when it is the password too.
    assert mask_text("at amqp://guest:guest@h:1//, guest refused", ["guest"]) == (
        "at amqp://guest:***@h:1//, *** refused"
    )


def test_doctor_masks_a_short_password_without_mangling_the_rest() -> None:
    report = DoctorReport()
    report.add_secret_from("postgresql://postgres:p@127.0.0.1:5432/test")
    assert report.mask("Postgres at postgresql://postgres:p@127.0.0.1:5432/test, loaded by the app") == (
        "Postgres at postgresql://postgres:***@127.0.0.1:5432/test, loaded by the app"
    )
    report.add_secret_from("postgresql://postgres:p@ss/w@127.0.0.1:5432/test")
    assert report.mask("failed to resolve host 'ss'") == "failed to resolve host '***'"
