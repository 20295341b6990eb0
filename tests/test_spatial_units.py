"""Lengths in text: every formatted value parses back within half a rounding step."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phi3v_spatial.spatial.units import UNITS, format_quantity, parse_quantity, rounding_step


@given(st.floats(min_value=0.005, max_value=20.0), st.sampled_from(UNITS), st.booleans())
@settings(max_examples=400, deadline=None)
def test_format_parses_back_within_rounding(value, unit, long):
    text = format_quantity(value, unit, long=long)
    back = parse_quantity(f"The mug is about {text} tall.")
    assert back is not None, text
    assert abs(back - value) <= rounding_step(value, unit) / 2 + 1e-9, (value, text, back)


@pytest.mark.parametrize("text, metres", [
    ("35 cm", 0.35), ("about 35 centimeters away", 0.35), ("0.42 meters", 0.42), ("1.5 metres", 1.5),
    ("13.5 inches", 13.5 * 0.0254), ("2 ft", 0.6096), ("1 foot", 0.3048), ("2 feet 3 inches", 0.6858),
    ("5'3\"", 5 * 0.3048 + 3 * 0.0254), ("30-40 cm", 0.35), ("a foot", 0.3048), ("half a meter", 0.5),
    ("1,5 m", 1.5), ("120 mm", 0.12), ("It is 14 in. wide", 14 * 0.0254), (".5m", 0.5),
    ("The red mug is 12 cm tall, the box 30 cm.", 0.12),
])
def test_parse_examples(text, metres):
    assert parse_quantity(text) == pytest.approx(metres)


@pytest.mark.parametrize("text", ["", "Yes.", "3 mugs", "the mug is in the box", "at 3 o'clock", "someone moved it",
                                  "a mug"])
def test_parse_rejects_non_lengths(text):
    assert parse_quantity(text) is None


def test_format_units_and_steps():
    assert format_quantity(0.354, "cm") == "35 cm"
    assert format_quantity(0.354, "m", long=True) == "0.35 meters"
    assert format_quantity(0.0254, "in", long=True) == "1 inch"
    assert format_quantity(1.0, "ft") == "3.3 ft"
    assert rounding_step(0.2, "in") == pytest.approx(0.0127)
    assert rounding_step(1.0, "in") == pytest.approx(0.0254)
    with pytest.raises(ValueError):
        format_quantity(1.0, "yd")
    assert math.isclose(parse_quantity(format_quantity(2.0, "ft", long=True)), 2.0, abs_tol=0.0153)
