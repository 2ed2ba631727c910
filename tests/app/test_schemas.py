"""Item parsing and the formatting of validation errors."""

from __future__ import annotations

import math

import pytest

from app.error_handlers import describe_validation_errors, format_location
from app.schemas import EmbeddingItem, ImageItem, TextItem, parse_item


def test_parse_string_is_text() -> None:
    assert parse_item("a cat") == TextItem("a cat")


def test_parse_text_object() -> None:
    assert parse_item({"text": "a cat"}) == TextItem("a cat")


def test_parse_image_object() -> None:
    assert parse_item({"image": "aGVsbG8="}) == ImageItem("aGVsbG8=")


def test_parse_embedding_object() -> None:
    assert parse_item({"embedding": [1, 2.5]}) == EmbeddingItem((1.0, 2.5))


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"text": 3}, '"text" must be a string'),
        ({"image": ""}, '"image" must be a non-empty base64 string'),
        ({"embedding": []}, "non-empty list"),
        ({"embedding": [1.0, True]}, '"embedding"[1] must be a number'),
        ({"embedding": [math.nan]}, '"embedding"[0] must be a finite number'),
        ({"embedding": [10**400]}, '"embedding"[0] must be a finite number'),
        ({"text": "a", "image": "b"}, "got an object with keys ['image', 'text']"),
        ([1, 2], "token ids are not supported"),
        (None, "got NoneType"),
    ],
)
def test_parse_rejects(raw: object, fragment: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_item(raw)
    assert fragment in str(raised.value)


def test_format_location_indices() -> None:
    assert format_location(("body", "input", 3)) == "input[3]"
    assert format_location(("body", "queries", 0, "text")) == "queries[0].text"
    assert format_location(("body",)) == "request body"


def test_describe_json_error_is_400() -> None:
    error = describe_validation_errors([{"type": "json_invalid", "loc": ("body", 7), "msg": "", "ctx": {"error": "bad"}}])
    assert error.status == 400
    assert error.message == "request body is not valid JSON: bad at character 7"


def test_describe_caps_problem_count() -> None:
    errors = [{"type": "missing", "loc": ("body", f"field{i}"), "msg": "Field required"} for i in range(7)]
    message = describe_validation_errors(errors).message
    assert message.startswith("field0: field required; field1: field required")
    assert message.endswith("and 2 more problems")
