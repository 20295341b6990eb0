"""Tolerant parsing of free-form model answers into the structured shapes of the dataset schema.

Real model output is prose: "Yes, the mug is left of the laptop.", "The answer is (B) behind",
"About 1.2 meters (roughly 4 feet).", "```json\n[{...}]\n```". Each `parse_*` function takes the
raw text and returns the structured value, or None when the text holds no answer of that shape
(None counts as "not answered" in the metrics, never as a guess).

Conventions:
- quantities are returned in metres; a bare number takes the unit the question asked for;
- boxes are [x1, y1, x2, y2] and points [x, y], in whatever coordinates the model wrote (the
  dataset uses integers 0-1000 normalised to the image size);
- poses are dicts with float x, y, z, roll, pitch, yaw (metres / radians) and the grasp value as written.
"""
from __future__ import annotations

import ast
import json
import re

# ---------------------------------------------------------------------------------------------
# numbers and units

_NUMBER_WORDS = {
    "zero": 0, "no": 0, "none": 0, "one": 1, "a": 1, "an": 1, "single": 1, "two": 2, "three": 3,
    "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11,
    "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17,
    "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "half": 0.5,
}
# words that count as a number in a count answer ("a" / "an" / "no" only in a quantity or count context)
_COUNT_WORDS = {k: v for k, v in _NUMBER_WORDS.items() if k not in ("a", "an", "single", "half")}

# metres per unit; keys are the spellings accepted after a number
UNIT_METRES = {
    "m": 1.0, "meter": 1.0, "meters": 1.0, "metre": 1.0, "metres": 1.0,
    "cm": 0.01, "centimeter": 0.01, "centimeters": 0.01, "centimetre": 0.01, "centimetres": 0.01,
    "mm": 0.001, "millimeter": 0.001, "millimeters": 0.001, "millimetre": 0.001, "millimetres": 0.001,
    "km": 1000.0, "kilometer": 1000.0, "kilometers": 1000.0, "kilometre": 1000.0, "kilometres": 1000.0,
    "in": 0.0254, "inch": 0.0254, "inches": 0.0254, '"': 0.0254, "''": 0.0254, "\u2033": 0.0254,
    "ft": 0.3048, "foot": 0.3048, "feet": 0.3048, "'": 0.3048, "\u2032": 0.3048,
    "yd": 0.9144, "yard": 0.9144, "yards": 0.9144,
}
# "1,200" is thousands, "1,5" a decimal comma, "1.5" / ".5" decimals
_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+,\d{1,2}(?!\d)|\d+)(?:\.\d+)?|[-+]?\.\d+"
_WORD_NUM = "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True))
_UNIT = "|".join(re.escape(u) for u in sorted(UNIT_METRES, key=len, reverse=True))
# "1.5 m", "1.5m", "one and a half metres", "1-2 m", "1 to 2 feet", "5'6\"", "5 ft 6 in"
_QTY_RE = re.compile(
    rf"(?P<a>{_NUM}|\bhalf\s+an?\b|\b(?:{_WORD_NUM})\b(?:\s+and\s+a\s+half)?)"
    rf"(?:\s*(?:-|–|to)\s*(?P<b>{_NUM}))?"
    rf"\s*(?P<unit>{_UNIT})(?![A-Za-z])"
    rf"(?:\s*(?P<in>{_NUM})\s*(?:\"|''|\u2033|in\b|inch(?:es)?\b))?",
    re.IGNORECASE,
)
_BARE_NUM_RE = re.compile(rf"(?<![\w.])({_NUM})(?![\w.])")


def _to_float(token: str) -> float | None:
    token = token.strip().lower()
    if token in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[token])
    if re.fullmatch(r"half\s+an?", token):
        return 0.5
    m = re.fullmatch(rf"({_WORD_NUM})\s+and\s+a\s+half", token)
    if m:
        return _NUMBER_WORDS[m.group(1)] + 0.5
    return _num(token)


def _num(token: str) -> float | None:
    token = token.strip()
    if re.fullmatch(r"[-+]?\d+,\d{1,2}", token):
        token = token.replace(",", ".")
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


def parse_quantity(text: str, default_unit: str | None = None) -> float | None:
    """The first length in `text`, in metres.

    Accepts m/cm/mm/km/in/ft/yd and their words ("metres", "inches", "feet"), the prime marks
    (5'6"), compound feet-and-inches ("5 ft 6 in"), number words ("two meters", "half a metre"),
    and ranges ("1-2 m" -> 1.5 m). A bare number (no unit anywhere) is read in `default_unit`
    when given, else it is not an answer.
    """
    text = text.replace("\u2019", "'").replace("\u201d", '"')
    for m in _QTY_RE.finditer(text):
        unit = m.group("unit").lower()
        a = _to_float(m.group("a"))
        if a is None:
            continue
        if unit == "in" and (not re.match(_NUM, m.group("a"))
                             or re.match(r"\s+(?:the|a|an|this|that|front|there)\b", text[m.end("unit"):], re.I)):
            continue  # "one in the corner", "2 in the box"
        value = a if m.group("b") is None else (a + _num(m.group("b"))) / 2
        metres = value * UNIT_METRES[unit]
        if m.group("in"):
            metres += _num(m.group("in")) * UNIT_METRES["in"]
        return metres
    if default_unit is not None:
        m = _BARE_NUM_RE.search(text)
        if m:
            return _num(m.group(1)) * UNIT_METRES[default_unit.lower()]
    return None


def format_quantity(metres: float, unit: str) -> str:
    """`metres` written in `unit` (one of UNIT_METRES), e.g. "37.5 cm"."""
    value = metres / UNIT_METRES[unit]
    return f"{value:.4g} {unit}"


# ---------------------------------------------------------------------------------------------
# yes / no, choice, clock, count

_YES = {"yes", "yeah", "yep", "yup", "true", "correct", "affirmative", "indeed"}  # not "right": a direction
_NO = {"no", "nope", "not", "false", "incorrect", "negative", "none", "never", "isn't", "aren't",
       "doesn't", "don't", "cannot", "can't", "wrong", "nothing"}
_WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")
# phrases of uncertainty, whose "not" / "don't" is no answer
_UNSURE_RE = re.compile(r"\b(?:i\s+(?:don't|do\s+not)\s+know|not\s+(?:sure|certain)|unsure|"
                        r"(?:cannot|can't|unable\s+to)\s+(?:tell|determine|say))\b")


def parse_yesno(text: str) -> bool | None:
    """True / False from the first yes-like or no-like word ("Yes.", "No, it is not.",
    "The statement is true.", "It is not left of the bowl." -> False); None if neither appears
    ("I don't know", "I cannot tell")."""
    text = _UNSURE_RE.sub(" ", text.lower().replace("\u2019", "'"))
    for word in _WORD_RE.findall(text):
        if word in _YES:
            return True
        if word in _NO:
            return False
    return None


def option_letter(index: int) -> str:
    return chr(ord("A") + index)


def _norm(s: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", s.lower()))


def parse_choice(text: str, options: list[str]) -> int | None:
    """Index of the chosen option: a letter ("B", "(B)", "B.", "Answer: B", "option B", "The
    answer is B) behind") or the option's text ("behind the chair"). Returns None when nothing
    or more than one option matches."""
    n = len(options)
    letters = "".join(option_letter(i) for i in range(n))
    stripped = text.strip()
    # 1. the answer starts with the letter: "B", "(B)", "B.", "B) text", "B: text"
    m = re.match(rf"^[\(\[]?([{letters}])(?:[\)\].:,]|\s|$)", stripped)
    if m and not (m.group(1) == "A" and re.match(r"^A\s+[a-z]", stripped)):  # "A cup is..." is prose
        return ord(m.group(1)) - ord("A")
    m = re.fullmatch(rf"[\(\[]?([{letters.lower()}])[\)\].]?", stripped)  # a lone lowercase letter: "b", "(c)"
    if m:
        return ord(m.group(1).upper()) - ord("A")
    # 2. an explicit marker: "answer is B", "answer: (B)", "option B", "choice (C)"
    m = re.search(rf"(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*[\(\[]?([{letters}])\b", stripped, re.I)
    if m and m.group(1).isupper():
        return ord(m.group(1)) - ord("A")
    # 3. a parenthesised letter anywhere: "(B)"
    found = {ord(c) - ord("A") for c in re.findall(rf"\(([{letters}])\)", stripped)}
    if len(found) == 1:
        return found.pop()
    # 4. the option's text; the longest matching option wins ("left" vs "left of the cup")
    norm = f" {_norm(text)} "
    hits = [i for i, opt in enumerate(options) if _norm(opt) and f" {_norm(opt)} " in norm]
    if not hits:
        return None
    longest = max(len(_norm(options[i])) for i in hits)
    best = [i for i in hits if len(_norm(options[i])) == longest]
    # every shorter hit must be contained in the longest one, else the text names two options
    if len(best) == 1 and all(f" {_norm(options[i])} " in f" {_norm(options[best[0]])} " for i in hits):
        return best[0]
    return None


_CLOCK_RE = re.compile(
    r"\b(1[0-2]|0?[1-9]|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)"
    r"(?::00)?\s*(?:o\s*'\s*clock|o\s*clock|oclock|o'clock)",
    re.IGNORECASE,
)


def parse_clock(text: str) -> int | None:
    """Clock direction 1..12: "3 o'clock", "at two o'clock", "12:00 o'clock"; a lone number
    1..12 ("3") is accepted when the text has no other number."""
    text = text.replace("\u2019", "'")
    m = _CLOCK_RE.search(text)
    if m:
        token = m.group(1).lower()
        return int(_NUMBER_WORDS.get(token, token) if not token.isdigit() else token)
    nums = _BARE_NUM_RE.findall(text)
    if len(nums) == 1:
        try:
            v = float(nums[0])
        except ValueError:
            return None
        if v.is_integer() and 1 <= v <= 12:
            return int(v)
    return None


def parse_count(text: str) -> int | None:
    """A non-negative count: the first integer or number word ("There are three mugs." -> 3,
    "None." / "no mugs" -> 0)."""
    for m in re.finditer(rf"(?<![\w.])(\d+(?:\.0+)?)(?![\w.])|\b({'|'.join(_COUNT_WORDS)})\b", text.lower()):
        if m.group(1):
            return int(float(m.group(1)))
        return int(_COUNT_WORDS[m.group(2)])
    return None


# ---------------------------------------------------------------------------------------------
# JSON embedded in prose, boxes, points, poses

_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def json_values(text: str, strict: bool = False) -> list:
    """Every top-level JSON object or array in `text`, in order: inside ``` fences when there
    are any, else anywhere in the prose ("one per line" JSONL answers give several).

    With strict=False a Python literal (single quotes, True/False) is accepted too."""
    fenced = [m.group(1) for m in _FENCE_RE.finditer(text)]
    for chunks in ((fenced, [text]) if fenced else ([text],)):
        values = [v for chunk in chunks for v in _scan_json(chunk, strict)]
        if values:
            return values
    return []


def _scan_json(chunk: str, strict: bool) -> list:
    decoder = json.JSONDecoder()
    values, i = [], 0
    while True:
        starts = [k for k in (chunk.find("[", i), chunk.find("{", i)) if k >= 0]
        if not starts:
            return values
        start = min(starts)
        try:
            value, i = decoder.raw_decode(chunk, start)
            values.append(value)
            continue
        except json.JSONDecodeError:
            pass
        if not strict:
            end = _matching_bracket(chunk, start)
            if end is not None:
                try:
                    value = ast.literal_eval(chunk[start:end + 1])
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    value = None
                if isinstance(value, (list, dict, tuple)):
                    values.append(value)
                    i = end + 1
                    continue
        i = start + 1


def extract_json(text: str, strict: bool = False):
    """The first JSON object or array in `text` (see `json_values`), or None."""
    values = json_values(text, strict)
    return values[0] if values else None


def _matching_bracket(s: str, start: int) -> int | None:
    pairs = {"[": "]", "{": "}", "(": ")"}
    stack = []
    quote = None
    for i in range(start, len(s)):
        c = s[i]
        if quote:
            if c == "\\":
                continue
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in pairs:
            stack.append(pairs[c])
        elif c in ")]}":
            if not stack or stack.pop() != c:
                return None
            if not stack:
                return i
    return None


def _numbers(value, n: int) -> list[float] | None:
    if isinstance(value, (list, tuple)) and len(value) == n and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        return [float(v) for v in value]
    return None


def _collect(value, key_names: tuple[str, ...], n: int) -> list[list[float]]:
    """Every n-number list in a parsed JSON value: under one of `key_names` in dicts, or bare."""
    out = []
    flat = _numbers(value, n)
    if flat is not None:
        return [flat]
    if isinstance(value, dict):
        for key in key_names:
            if key in value:
                got = _numbers(value[key], n)
                if got is not None:
                    return [got]
        for v in value.values():
            if isinstance(v, (list, dict)):
                out.extend(_collect(v, key_names, n))
        return out
    if isinstance(value, (list, tuple)):
        for v in value:
            out.extend(_collect(v, key_names, n))
    return out


_BOX_KEYS = ("bbox_2d", "bbox", "box", "box_2d")
_POINT_KEYS = ("point_2d", "point", "xy")


def parse_boxes(text: str) -> list[list[float]] | None:
    """Boxes [x1, y1, x2, y2]: JSON (`[{"label": .., "bbox_2d": [..]}]`, `{"bbox": [..]}`, `[..]`)
    or bracketed quadruples / "(x1,y1),(x2,y2)" pairs in prose. Corners are sorted."""
    boxes = _collect(json_values(text), _BOX_KEYS, 4)
    if not boxes:
        for m in re.finditer(rf"[\[\(]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\]\)]", text):
            boxes.append([float(g) for g in m.groups()])
    if not boxes:
        pairs = re.findall(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)", text)
        boxes = [[float(g) for g in p] for p in pairs]
    if not boxes:
        return None
    return [[min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])] for b in boxes]


def parse_points(text: str) -> list[list[float]] | None:
    """Points [x, y]: JSON (`[{"label": .., "point_2d": [x, y]}]`, `[[x, y], ..]`, `[x, y]`) or
    "(x, y)" pairs in prose."""
    points = _collect(json_values(text), _POINT_KEYS, 2)
    if not points:
        points = [[float(a), float(b)] for a, b in re.findall(rf"[\[\(]\s*({_NUM})\s*,\s*({_NUM})\s*[\]\)]", text)]
    return points or None


POSE_KEYS = ("x", "y", "z", "roll", "pitch", "yaw")


def _pose_from_dict(d: dict) -> dict | None:
    d = {str(k).lower(): v for k, v in d.items()}
    pose = {}
    if all(k in d for k in ("x", "y", "z")):
        for k in ("x", "y", "z"):
            pose[k] = d[k]
    else:
        for key in ("position", "pos", "xyz", "translation"):
            xyz = _numbers(d.get(key), 3)
            if xyz is not None:
                pose.update(zip(("x", "y", "z"), xyz))
                break
        else:
            return None
    rpy = None
    for key in ("rpy", "orientation", "rotation", "euler"):
        rpy = _numbers(d.get(key), 3)
        if rpy is not None:
            break
    for i, k in enumerate(("roll", "pitch", "yaw")):
        pose[k] = d.get(k, rpy[i] if rpy is not None else 0.0)
    try:
        pose = {k: float(v) for k, v in pose.items()}
    except (TypeError, ValueError):
        return None
    pose["grasp"] = d.get("grasp", d.get("gripper"))
    return pose


def _pose_dicts(value) -> list[dict]:
    if isinstance(value, dict):
        pose = _pose_from_dict(value)
        if pose is not None:
            return [pose]
        out = []
        for v in value.values():
            if isinstance(v, (list, dict)):
                out.extend(_pose_dicts(v))
        return out
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _pose_dicts(v)]
    return []


_POSE_LINE_RE = re.compile(
    rf"\b(x|y|z|roll|pitch|yaw|grasp|gripper)\s*[:=]\s*({_NUM}|[A-Za-z_]+)", re.IGNORECASE
)


def parse_poses(text: str) -> tuple[list[dict] | None, bool]:
    """Robot poses from JSON (a pose dict, a list of them, or a dict holding them; position may be
    `x, y, z` or a `position` triple, orientation `roll, pitch, yaw` or an `rpy` triple) or from
    "x=0.1 y=0.2 z=0.3 roll=0 ..." lines (one pose per line).

    Returns (poses or None, json_valid) where json_valid says the answer held strict JSON with
    at least one pose."""
    poses = _pose_dicts(json_values(text, strict=True))
    if poses:
        return poses, True
    poses = _pose_dicts(json_values(text))
    if poses:
        return poses, False
    for line in text.splitlines():
        fields = {k.lower(): v for k, v in _POSE_LINE_RE.findall(line)}
        if all(k in fields for k in ("x", "y", "z")):
            pose = {}
            for k in POSE_KEYS:
                try:
                    pose[k] = float(fields.get(k, 0.0))
                except ValueError:
                    pose[k] = 0.0
            pose["grasp"] = _literal(fields.get("grasp", fields.get("gripper")))
            poses.append(pose)
    return (poses or None), False


def _literal(token: str | None):
    if token is None:
        return None
    low = token.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return float(token)
    except ValueError:
        return token
