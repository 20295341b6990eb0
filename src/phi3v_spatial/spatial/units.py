"""Lengths in text: formatting in m, cm, in and ft, and a parser that reads them back in metres.

`format_quantity(0.354, "cm")` -> "35 cm"; `parse_quantity("about 35 centimeters")` -> 0.35.
Rounding steps (`rounding_step`): m 0.01, cm 1, in 0.5 (1 from 24 in up), ft 0.1. A formatted
value parses back within half a step.
"""
from __future__ import annotations

import math
import re

UNITS = ("m", "cm", "in", "ft")
METRES_PER = {"m": 1.0, "cm": 0.01, "mm": 0.001, "in": 0.0254, "ft": 0.3048}
_LONG = {"m": ("meter", "meters"), "cm": ("centimeter", "centimeters"), "in": ("inch", "inches"),
         "ft": ("foot", "feet")}

_UNIT_WORDS = {
    "m": ("m", "meter", "meters", "metre", "metres"),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "in": ("in", "inch", "inches", '"', "\u2033", "''"),
    "ft": ("ft", "foot", "feet", "'", "\u2032"),
}
_WORD_TO_UNIT = {w: u for u, ws in _UNIT_WORDS.items() for w in ws}
_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                 "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "half a": 0.5, "half an": 0.5}

_NUM = r"(\d+(?:[.,]\d+)?|\.\d+|half an?|an?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
_UNIT = "(" + "|".join(sorted((re.escape(w) for w in _WORD_TO_UNIT), key=len, reverse=True)) + ")"
_END = r"(?![A-Za-z])"
_COMPOUND = re.compile(rf"\b{_NUM}\s*(ft|foot|feet|'|\u2032)\s*(?:and\s+)?{_NUM}\s*(in|inch|inches|\"|\u2033){_END}", re.I)
_RANGE = re.compile(rf"\b{_NUM}\s*(?:-|\u2013|to)\s*{_NUM}\s*{_UNIT}{_END}", re.I)
_SINGLE = re.compile(rf"(?<![\w.]){_NUM}\s*{_UNIT}{_END}", re.I)


def rounding_step(value_m: float, unit: str) -> float:
    """The resolution (metres) that format_quantity rounds to for this value and unit."""
    if unit == "m":
        return 0.01
    if unit == "cm":
        return 0.01
    if unit == "in":
        return 0.0254 * (0.5 if abs(value_m) < 24 * 0.0254 else 1.0)
    if unit == "ft":
        return 0.3048 * 0.1
    raise ValueError(f"unknown unit {unit!r}; expected one of {UNITS}")


def _number(v: float, step_in_unit: float) -> str:
    v = round(v / step_in_unit) * step_in_unit
    decimals = max(0, -math.floor(math.log10(step_in_unit) + 1e-9)) if step_in_unit < 1 else 0
    s = f"{v:.{decimals}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def format_quantity(value_m: float, unit: str, long: bool = False) -> str:
    """A length in metres as text in `unit` ("35 cm"; with long=True "35 centimeters")."""
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; expected one of {UNITS}")
    step = rounding_step(value_m, unit) / METRES_PER[unit]
    text = _number(value_m / METRES_PER[unit], step)
    if not long:
        return f"{text} {unit}"
    singular, plural = _LONG[unit]
    return f"{text} {singular if text == '1' else plural}"


def _value(token: str) -> float:
    t = token.lower().strip()
    if t in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[t])
    return float(t.replace(",", "."))


def parse_quantity(text: str) -> float | None:
    """The first length in the text, in metres; None when there is none.

    Reads "35 cm", "0.35 meters", "13.5 inches", "1.2 ft", "2 feet 3 inches", 5'3", "30-40 cm"
    (the midpoint) and small number words ("a foot", "half a meter")."""
    if not text:
        return None
    found = []
    for m in _COMPOUND.finditer(text):
        found.append((m.start(), _value(m.group(1)) * METRES_PER["ft"] + _value(m.group(3)) * METRES_PER["in"]))
        break
    for m in _RANGE.finditer(text):
        unit = _WORD_TO_UNIT[m.group(3).lower()]
        found.append((m.start(), (_value(m.group(1)) + _value(m.group(2))) / 2 * METRES_PER[unit]))
        break
    for m in _SINGLE.finditer(text):
        unit = _WORD_TO_UNIT[m.group(2).lower()]
        if unit in ("in", "ft") and m.group(1).lower() in ("a", "an") and m.group(2).lower() in ("in", "'", '"'):
            continue  # "a in", "an '" are not lengths
        found.append((m.start(), _value(m.group(1)) * METRES_PER[unit]))
        break
    if not found:
        return None
    return min(found, key=lambda t: t[0])[1]
