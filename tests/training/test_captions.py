"""Tests of caption rules for labelled images."""

from __future__ import annotations

import numpy as np
import pytest

from training.captions import caption_images, class_prompts, describe_font, label_letter, template_fields

FONTS = {
    "0": {"family": "DejaVu Serif", "style": "Bold Italic"},
    "1": {"family": "Noto Sans Mono", "style": "ExtraLight"},
    "2": {"family": "Ubuntu", "style": "Regular"},
    "3": {"family": "Linux Libertine", "style": "Italic"},
}


@pytest.mark.parametrize(
    ("family", "style", "expected"),
    [
        ("DejaVu Serif", "Bold Italic", "bold italic serif"),
        ("Noto Sans Mono", "ExtraLight", "extra-light monospace"),
        ("Noto Sans", "SemiBold Condensed", "semibold condensed sans-serif"),
        ("Ubuntu", "Regular", "regular"),
        ("Linux Libertine", "Italic", "italic"),
        ("UnifrakturMaguntia", "Book", "regular"),
        ("Old Fraktur", "BoldOblique", "bold italic blackletter"),
        ("Px IBM EGA8", "Regular", "pixel"),
    ],
)
def test_describe_font(family, style, expected):
    assert describe_font(family, style) == expected


def test_glyphs_rule():
    captions = caption_images(np.array([0, 1, 2, 9]), "glyphs", np.array([0, 1, 2, 3]), FONTS)
    assert captions == [
        "the letter A in a bold italic serif font",
        "the letter B in an extra-light monospace font",
        "the letter C in a regular font",
        "the letter J in an italic font",
    ]


def test_letter_rule_needs_no_fonts():
    assert caption_images(np.array([0, 25]), "letter") == ["the letter A", "the letter Z"]


def test_template_rule():
    captions = caption_images(np.array([3]), "{letter}/{label} from {family} ({style})", np.array([2]), FONTS)
    assert captions == ["D/3 from Ubuntu (Regular)"]


def test_label_template_allows_any_label():
    assert caption_images(np.array([0, 42]), "a digit {label}") == ["a digit 0", "a digit 42"]


def test_font_fields_need_fonts():
    with pytest.raises(ValueError, match="fonts.json"):
        caption_images(np.array([0]), "glyphs")


def test_unknown_font_id():
    with pytest.raises(ValueError, match="font id 7"):
        caption_images(np.array([0]), "glyphs", np.array([7]), FONTS)


def test_template_rejects_unknown_field():
    with pytest.raises(ValueError, match="unknown fields"):
        template_fields("the {colour} letter")


def test_template_rejects_malformed():
    with pytest.raises(ValueError, match="malformed"):
        template_fields("the {letter")


def test_rule_without_fields():
    with pytest.raises(ValueError, match="no field"):
        caption_images(np.array([0]), "sans")


def test_label_letter_bounds():
    assert label_letter(0) == "A"
    with pytest.raises(ValueError, match="no letter"):
        label_letter(26)
    with pytest.raises(ValueError, match="no letter"):
        label_letter(-1)


def test_class_prompts():
    assert class_prompts("the letter {letter}", 3) == ["the letter A", "the letter B", "the letter C"]
    assert class_prompts("class {label}", 2) == ["class 0", "class 1"]


def test_class_prompts_reject_font_fields():
    with pytest.raises(ValueError, match="label and letter"):
        class_prompts("{letter} in {font}", 2)
