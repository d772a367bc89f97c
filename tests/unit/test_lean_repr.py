"""The lean publish's ``argsrepr``/``kwargsrepr``: ``repr`` where it is exactly what Celery's
``saferepr`` writes, else None (Celery's own then)."""

from __future__ import annotations

import enum
import random
import string
from typing import Any

from celery.utils.saferepr import saferepr

from unified_jobs.adapters.celery.lean_publish import plain_repr

ALPHABET = string.printable + "é☃\x00"


def _value(rng: random.Random) -> Any:
    pick = rng.randrange(7)
    if pick == 0:
        return rng.randint(-(10**20), 10**20)
    if pick == 1:
        return rng.choice([0.0, -0.0, 1.5, 1e20, -3.25e-7, float("inf"), float("nan")])
    if pick == 2:
        return rng.choice([True, False, None])
    if pick == 3:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(12)))
    if pick == 4:
        return [_value(rng) for _ in range(rng.randrange(3))]
    if pick == 5:
        return {"k": _value(rng)}
    return "plain_text-1.@/:" * rng.randrange(60)  # long ones too


def test_it_is_saferepr_wherever_it_answers_and_answers_for_plain_json_kwargs() -> None:
    rng = random.Random(7)
    answered = 0
    for _ in range(5000):
        flat = rng.random() < 0.5
        value: Any = (
            {f"k{i}": _value(rng) for i in range(rng.randrange(5))}
            if flat
            else [_value(rng) for _ in range(rng.randrange(5))]
        )
        fast = plain_repr(value, 1024)
        if fast is not None:
            answered += 1
            assert fast == saferepr(value, 1024), value
    assert answered > 500, "the fast path almost never applies"
    assert plain_repr({"n": 1, "to": "a@b.c", "ok": True, "x": None, "f": 1.5}, 1024) is not None
    assert plain_repr([], 1024) == "[]" == saferepr([], 1024)


def test_what_saferepr_writes_otherwise_is_left_to_it() -> None:
    class Color(enum.IntEnum):
        RED = 1

    for value in [
        {"s": "it's"},  # quotes: repr picks the other ones
        {"s": "é"},  # saferepr does not escape as repr does
        {"nested": {"a": 1}},  # saferepr has levels
        {"c": Color.RED},
        {1: "x"},
        "text",
        {"k": "x" * 600},  # past half of maxsize: saferepr truncates at maxsize
    ]:
        assert plain_repr(value, 1024) is None, value
    assert plain_repr({"k": "x"}, None) == "{'k': 'x'}"
