"""Answer parsing: every unit, every answer shape, the prose real models write."""
import math

import pytest

from phi3v_spatial.evaluate import parsing as P


@pytest.mark.parametrize("text, metres", [
    ("1.5 m", 1.5),
    ("1.5m", 1.5),
    ("about 2 meters", 2.0),
    ("0.75 metres", 0.75),
    ("It is 37.5 cm away.", 0.375),
    ("37.5 centimeters", 0.375),
    ("120 centimetres", 1.2),
    ("250 mm", 0.25),
    ("250 millimeters", 0.25),
    ("12 in", 12 * 0.0254),
    ("12 inches", 12 * 0.0254),
    ("one inch", 0.0254),
    ("3 ft", 3 * 0.3048),
    ("3 feet", 3 * 0.3048),
    ("one foot", 0.3048),
    ("5'6\"", 5 * 0.3048 + 6 * 0.0254),
    ("5 ft 6 in", 5 * 0.3048 + 6 * 0.0254),
    ("5 feet 6 inches", 5 * 0.3048 + 6 * 0.0254),
    ("2 yards", 2 * 0.9144),
    ("0.002 km", 2.0),
    ("two meters", 2.0),
    ("one and a half metres", 1.5),
    ("half a meter", 0.5),
    ("a meter", 1.0),
    ("1-2 m", 1.5),
    ("between 1 to 2 feet", 1.5 * 0.3048),
    ("The mug is 1,200 mm from the bowl (about 4 feet).", 1.2),
    ("Roughly 3.2 m, or 320 cm.", 3.2),
    ("The distance is .5 m", 0.5),
    ("1,5 m", 1.5),                  # decimal comma
    ("12,25 cm", 0.1225),
])
def test_parse_quantity_units(text, metres):
    assert P.parse_quantity(text) == pytest.approx(metres, rel=1e-9)


def test_parse_quantity_bare_number_uses_question_unit():
    assert P.parse_quantity("42") is None
    assert P.parse_quantity("42", default_unit="cm") == pytest.approx(0.42)
    assert P.parse_quantity("about 3.5", default_unit="ft") == pytest.approx(3.5 * 0.3048)
    assert P.parse_quantity("I cannot tell.", default_unit="m") is None


def test_parse_quantity_ignores_prose_in():
    assert P.parse_quantity("There is one in the corner, 2 m away") == pytest.approx(2.0)
    assert P.parse_quantity("2 in the box", default_unit="m") == pytest.approx(2.0)


@pytest.mark.parametrize("unit", ["m", "cm", "in", "ft", "mm"])
def test_format_quantity_roundtrips(unit):
    assert P.parse_quantity(P.format_quantity(1.2345, unit)) == pytest.approx(1.2345, rel=1e-3)


@pytest.mark.parametrize("text, value", [
    ("Yes", True), ("yes.", True), ("Yes, the cup is left of the plate.", True), ("Yeah", True),
    ("Correct.", True), ("True", True), ("No", False), ("no.", False), ("Nope", False),
    ("The cup is not left of the plate.", False), ("False", False), ("It isn't.", False),
    ("I don't know", None), ("I cannot tell.", None), ("Not sure, but yes.", True), ("I can't see one, no.", False), ("There is a cat", None), ("", None), ("It is to the right.", None),
])
def test_parse_yesno(text, value):
    assert P.parse_yesno(text) is value


OPTS = ["left of the bowl", "right of the bowl", "behind the bowl", "left"]


@pytest.mark.parametrize("text, index", [
    ("B", 1), ("(B)", 1), ("B.", 1), ("B) right of the bowl", 1), ("C: behind", 2),
    ("The answer is C.", 2), ("Answer: (A)", 0), ("I choose option D", 3), ("answer is (B)", 1),
    ("It is behind the bowl.", 2), ("The mug is right of the bowl", 1),
    ("left of the bowl", 0),  # longest option wins over "left"
    ("left", 3),
    ("A mug is on the table", None),  # the article A is not option A
    ("left of the bowl or right of the bowl", None),  # two options named
    ("b", 1), ("(c)", 2), ("E", None), ("no idea", None),
])
def test_parse_choice(text, index):
    assert P.parse_choice(text, OPTS) == index


@pytest.mark.parametrize("text, value", [
    ("3 o'clock", 3), ("At 12 o'clock.", 12), ("two o\u2019clock", 2), ("10 oclock", 10),
    ("It is at the 9 o clock position", 9), ("7", 7), ("13", None), ("between 2 and 3", None), ("ahead", None),
])
def test_parse_clock(text, value):
    assert P.parse_clock(text) == value


@pytest.mark.parametrize("text, value", [
    ("3", 3), ("There are three mugs.", 3), ("None.", 0), ("There are no mugs", 0), ("12 objects", 12),
    ("zero", 0), ("many", None),
])
def test_parse_count(text, value):
    assert P.parse_count(text) == value


def test_extract_json_from_prose_and_fences():
    assert P.extract_json('Sure! Here it is: {"a": 1} hope it helps') == {"a": 1}
    assert P.extract_json('```json\n[{"b": [1, 2]}]\n```') == [{"b": [1, 2]}]
    assert P.extract_json("result: {'a': True}") == {"a": True}
    assert P.extract_json("result: {'a': True}", strict=True) is None
    assert P.extract_json("no json [here") is None


@pytest.mark.parametrize("text, boxes", [
    ('[{"label": "mug", "bbox_2d": [10, 20, 110, 220]}]', [[10, 20, 110, 220]]),
    ('The box is {"bbox": [110, 220, 10, 20]}.', [[10, 20, 110, 220]]),  # corners sorted
    ("[10, 20, 110, 220]", [[10, 20, 110, 220]]),
    ("mug at (10, 20), (110, 220)", [[10, 20, 110, 220]]),
    ("mug at (10,20),(110,220)", [[10, 20, 110, 220]]),
    ("box (1,200,300,400)", [[1, 200, 300, 400]]),
    ('[{"bbox_2d": [0, 0, 5, 5]}, {"bbox_2d": [5, 5, 9, 9]}]', [[0, 0, 5, 5], [5, 5, 9, 9]]),
    ("nothing", None),
])
def test_parse_boxes(text, boxes):
    assert P.parse_boxes(text) == boxes


@pytest.mark.parametrize("text, points", [
    ('[{"label": "mug", "point_2d": [500, 250]}]', [[500, 250]]),
    ("[[1, 2], [3, 4]]", [[1, 2], [3, 4]]),
    ("the mug is at (500, 250)", [[500, 250]]),
    ("the mug is at (5,25)", [[5, 25]]),
    ("[500, 250]", [[500, 250]]),
    ("nowhere", None),
])
def test_parse_points(text, points):
    assert P.parse_points(text) == points


def test_parse_poses_shapes():
    poses, valid = P.parse_poses('Plan: [{"x": 0.5, "y": -0.1, "z": 0.02, "roll": 0, "pitch": 3.14, "yaw": 0.3, "grasp": true}]')
    assert valid and poses == [{"x": 0.5, "y": -0.1, "z": 0.02, "roll": 0.0, "pitch": 3.14, "yaw": 0.3, "grasp": True}]
    poses, valid = P.parse_poses('{"pick": {"position": [0.1, 0.2, 0.3], "rpy": [0, 0, 1.0], "gripper": "close"}}')
    assert valid and poses[0]["x"] == 0.1 and poses[0]["yaw"] == 1.0 and poses[0]["grasp"] == "close"
    poses, valid = P.parse_poses("{'x': 0.1, 'y': 0.2, 'z': 0.3}")  # python literal: parsed, not valid JSON
    assert not valid and poses[0]["z"] == 0.3 and poses[0]["roll"] == 0.0
    poses, valid = P.parse_poses("pick: x=0.10 y=0.20 z=0.05 yaw=1.57 grasp=true\nplace: x: 0.4, y: -0.2, z: 0.1, grasp: false")
    assert not valid and [p["x"] for p in poses] == [0.1, 0.4] and [p["grasp"] for p in poses] == [True, False]
    assert math.isclose(poses[0]["yaw"], 1.57)
    assert P.parse_poses("move the arm left") == (None, False)
    # the data engine's format: one JSON object per line, with comments
    text = ('{"x":0.3,"y":0.1,"z":0.3,"roll":3.0,"pitch":1.57,"yaw":-0.1,"grasp":1.0} # Move Down\n'
            '{"x":0.3,"y":0.1,"z":0.3,"roll":3.0,"pitch":1.57,"yaw":-0.1,"grasp":0.0}  # Gripper Close')
    poses, valid = P.parse_poses(text)
    assert valid and [p["grasp"] for p in poses] == [1.0, 0.0] and poses[1]["pitch"] == 1.57
    poses, valid = P.parse_poses("Next: {x=0.3, y=0.1, z=0.4, roll=3.0, pitch=0.0, yaw=-0.1, grasp=1.0}")
    assert not valid and poses == [{"x": 0.3, "y": 0.1, "z": 0.4, "roll": 3.0, "pitch": 0.0, "yaw": -0.1, "grasp": 1.0}]


def test_json_values_several():
    assert P.json_values('{"a": 1}\n{"b": 2} and [3]') == [{"a": 1}, {"b": 2}, [3]]
    assert P.json_values('prose {"a": 1}\n```json\n{"b": 2}\n```') == [{"b": 2}]  # a fence wins
    assert P.parse_boxes('{"label": "a", "bbox_2d": [1, 2, 3, 4]}\n{"label": "b", "bbox_2d": [5, 6, 7, 8]}') == [
        [1, 2, 3, 4], [5, 6, 7, 8]]
