"""Caption rules: captions for labelled images that have no text, for image-text training.

A rule is a named rule or a ``str.format`` template over these fields of each image:

- ``label``: the integer label;
- ``letter``: the label as a capital letter (0 is A, 1 is B, ... 25 is Z);
- ``family``, ``style``: the font's family and style names from a fonts.json file, keyed
  by the image's ``font_ids`` value (as in the glyphs data set);
- ``font``: a short description of that font built from those names: weight, slant,
  width and class words where the names show them, such as ``bold italic serif``,
  ``italic`` or ``light condensed monospace``, and ``regular`` when they show none;
- ``article``: ``a``, or ``an`` when ``font`` starts with a vowel.

Named rules: ``letter`` is ``the letter {letter}``; ``glyphs`` is
``the letter {letter} in {article} {font} font``.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TEMPLATE_FIELDS = ("label", "letter", "family", "style", "font", "article")
FONT_FIELDS = ("family", "style", "font", "article")
NAMED_RULES = {
    "letter": "the letter {letter}",
    "glyphs": "the letter {letter} in {article} {font} font",
}

# (pattern over the lowercased, space-separated words of style and family, description word)
WEIGHTS = (
    (r"\b(thin|hairline)\b", "thin"),
    (r"\b(extra|ultra) ?light\b", "extra-light"),
    (r"\blight\b", "light"),
    (r"\b(semi|demi) ?bold\b|\bdemi\b", "semibold"),
    (r"\b(extra|ultra) ?bold\b", "extra-bold"),
    (r"\b(black|heavy)\b", "black"),
    (r"\bbold\b", "bold"),
    (r"\bmedium\b", "medium"),
)
SLANTS = ((r"\b(italic|oblique|slanted|kursiv)\b", "italic"),)
WIDTHS = (
    (r"\b(condensed|cond|narrow|compressed)\b", "condensed"),
    (r"\b(expanded|extended|wide)\b", "wide"),
)
CLASSES = (
    (r"\b(mono|monospace|code|console|typewriter|courier|terminal|fixed)\b", "monospace"),
    (r"\bsans\b", "sans-serif"),
    (r"\bserif\b", "serif"),
    (r"\b(script|hand|handwriting|brush|calligraphy|cursive)\b", "script"),
    (r"\b(fraktur|blackletter|gothic)\b", "blackletter"),
    (r"\b(pixel|px|bitmap|dseg|segment|lcd)\b", "pixel"),
)


def caption_images(
    labels: np.ndarray, rule: str, font_ids: np.ndarray | None = None, fonts: dict[str, Any] | None = None
) -> list[str]:
    """Return one caption per label (N,) under ``rule``, a named rule or a template.

    Raises ValueError for an unknown template field, a label without a letter, or a
    font field without ``font_ids`` and ``fonts``.
    """
    template = NAMED_RULES.get(rule, rule)
    fields = template_fields(template)
    if not fields:
        raise ValueError(f"caption rule {rule!r} uses no field; expected a name in {sorted(NAMED_RULES)} or a template over {TEMPLATE_FIELDS}")
    needs_font = bool(fields & set(FONT_FIELDS))
    if needs_font and (font_ids is None or fonts is None):
        raise ValueError(f"caption rule {rule!r} needs font_ids in the data and a fonts.json file")
    describe = _font_lookup(fonts) if needs_font else None
    captions = []
    for index, label in enumerate(labels.tolist()):
        values: dict[str, Any] = {"label": label, "letter": label_letter(label)} if "letter" in fields else {"label": label}
        if describe is not None:
            values.update(describe(int(font_ids[index])))
        captions.append(template.format(**values))
    return captions


def template_fields(template: str) -> set[str]:
    """Return the field names of ``template``; raises ValueError for fields outside ``TEMPLATE_FIELDS``."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise ValueError(f"caption template {template!r} is malformed: {error}") from error
    unknown = fields - set(TEMPLATE_FIELDS)
    if unknown:
        raise ValueError(f"caption template {template!r} has unknown fields {sorted(unknown)}; expected {TEMPLATE_FIELDS}")
    return fields


def label_letter(label: int) -> str:
    """Return the capital letter of ``label`` (0 is A); raises ValueError outside 0-25."""
    if not 0 <= label < 26:
        raise ValueError(f"label {label} has no letter; letters cover labels 0 to 25")
    return chr(ord("A") + label)


def class_prompts(template: str, classes: int) -> list[str]:
    """Return the prompt of each class 0..classes-1, such as ``the letter A`` ... for zero-shot use."""
    fields = template_fields(template)
    if fields & set(FONT_FIELDS):
        raise ValueError(f"prompt template {template!r} may only use label and letter")
    return [template.format(label=label, letter=label_letter(label) if "letter" in fields else "") for label in range(classes)]


def read_fonts(path: str | Path) -> dict[str, Any]:
    """Read a fonts.json mapping font id (a string) to ``family`` and ``style``."""
    fonts = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(fonts, dict):
        raise ValueError(f"{path} must map font ids to font records, got {type(fonts).__name__}")
    return fonts


def describe_font(family: str, style: str) -> str:
    """Return weight, slant, width and class words for a font, such as ``bold italic serif``."""
    words = " ".join(_split_words(style) + _split_words(family))
    tables = (WEIGHTS, SLANTS, WIDTHS, CLASSES)
    parts = [found for table in tables if (found := _first_match(table, words))]
    return " ".join(parts) or "regular"


def _font_lookup(fonts: dict[str, Any]) -> Callable[[int], dict[str, str]]:
    def lookup(font_id: int) -> dict[str, str]:
        record = fonts.get(str(font_id))
        if record is None:
            raise ValueError(f"font id {font_id} is not in the fonts.json file")
        font = describe_font(record.get("family", ""), record.get("style", ""))
        article = "an" if font[0] in "aeiou" else "a"
        return {"family": record.get("family", ""), "style": record.get("style", ""), "font": font, "article": article}

    return lookup


def _split_words(name: str) -> list[str]:
    """Split ``SemiBold Italic``-style names into lowercase words: ``semi bold italic``."""
    return [word.lower() for word in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)]


def _first_match(table: Sequence[tuple[str, str]], words: str) -> str | None:
    for pattern, description in table:
        if re.search(pattern, words):
            return description
    return None
