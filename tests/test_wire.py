"""hpo.wire: the strict typed conversion under the wire format, on messages of its own (not TrialJob's)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytest

from hpo.exceptions import ProtocolError
from hpo.wire import Message, clean, conforms, describe, preview


@dataclass(frozen=True)
class Note(Message):
    name: str
    count: int
    kind: Literal["a", "b"]
    weights: dict[str, float] = field(default_factory=dict)
    picks: list[int] = field(default_factory=list)
    score: float | None = None
    schema_version: int = 7


@dataclass(frozen=True)
class Plain(Message):
    x: int


def test_a_message_round_trips_through_standard_json():
    note = Note("n", 3, "b", {"w": 0.5}, [1, 2], float("nan"))
    text = note.to_json()
    assert json.loads(text) == {"name": "n", "count": 3, "kind": "b", "weights": {"w": 0.5}, "picks": [1, 2],
                                "score": None, "schema_version": 7}
    assert "NaN" not in text
    back = Note.from_json(text)
    assert back == Note("n", 3, "b", {"w": 0.5}, [1, 2], None)
    assert Note.from_dict({"name": "n", "count": 1, "kind": "a"}).schema_version == 7  # absent: the spoken one


@pytest.mark.parametrize("data, words", [
    ({"count": 1, "kind": "a"}, ["missing required field 'name'", "string"]),
    ({"name": "n", "count": 1, "kind": "c"}, ["field 'kind'", "one of 'a', 'b'", '"c"']),
    ({"name": "n", "count": True, "kind": "a"}, ["field 'count'", "integer", "true"]),
    ({"name": "n", "count": 1, "kind": "a", "weights": {"w": [1]}}, ["field 'weights'", "weights['w'] is a list"]),
    ({"name": "n", "count": 1, "kind": "a", "extra": 1}, ["unknown field(s) extra", "allowed: name, count, kind"]),
    ({"name": "n", "count": 1, "kind": "a", "schema_version": 8}, ["schema_version 8 is not supported", "version 7"]),
    ([1, 2], ["Note must be a JSON object, got list"]),
])
def test_wrong_input_names_the_field_and_what_is_allowed(data, words):
    with pytest.raises(ProtocolError) as err:
        Note.from_dict(data)
    for w in words:
        assert w in str(err.value)


def test_a_message_without_a_schema_version_field_refuses_one():
    assert Plain.from_dict({"x": 1}) == Plain(1)
    with pytest.raises(ProtocolError, match="unknown field"):
        Plain.from_dict({"x": 1, "schema_version": 1})
    with pytest.raises(ProtocolError, match="not valid JSON"):
        Plain.from_json("{x: 1")


def test_previews_of_untrusted_values_stay_short():
    assert preview("x" * 1000) == json.dumps("x" * 60 + "...")
    assert preview(10**400) == "an integer of 1329 bits"
    assert preview([0] * 10**5) == "a list of 100000 item(s)"
    assert preview({"a": {"b": 1}}) == "an object of 1 key(s)"
    assert preview(object()) == "a object"


def test_types_are_described_and_checked_alike():
    assert describe(dict[str, int | None]) == "object of integer or null"
    assert conforms({"a": None, "b": 2}, dict[str, int | None])
    assert not conforms({"a": 1.5}, dict[str, int])
    assert conforms(3, float) and not conforms(True, float) and not conforms(1, bool)
    assert clean({"a": (np.float32(1.5), math.inf), 2: np.int64(3)}) == {"a": [1.5, None], "2": 3}
