"""Question-answer synthesis from scene facts, in the model's chat format.

`make_samples(scene, mask)` returns sample dicts (the shape of one JSONL line, with `answer` and
`meta` still as dicts). Every answer is decided from the facts (`facts.py`), never guessed:
ambiguous relations, barely visible objects and uncertain counts are skipped. Each task draws
from its own random stream seeded with (scene seed, task), so choosing other tasks does not change
a task's samples.
"""
from __future__ import annotations

import itertools
import json
import zlib

import numpy as np

from ..errors import DataError
from . import catalog, facts, robot
from . import templates as T
from .generate import well_seen
from .geometry import interior_point, normalize_box
from .scene import Scene
from .units import UNITS, format_quantity

TASKS = ("relation_yesno", "relation_choice", "distance", "size", "direction_clock", "counting", "existence",
         "grounding_box", "grounding_point", "robot_action")
# samples per scene and task when samples_per_scene is None (fewer when a scene offers fewer)
DEFAULT_PER_TASK = {"relation_yesno": 4, "relation_choice": 3, "distance": 3, "size": 3, "direction_clock": 2,
                    "counting": 2, "existence": 4, "grounding_box": 3, "grounding_point": 2, "robot_action": 2}
_RELATION_GROUPS = (("left", "right"), ("front", "behind"), ("above", "below"), ("bigger", "smaller"),
                    ("taller", "shorter"), ("wider", "thinner"))


def check_tasks(tasks) -> tuple[str, ...]:
    if tasks is None:
        return TASKS
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise DataError(f"unknown task(s) {unknown or tasks}; choose from {', '.join(TASKS)}")
    return tuple(t for t in TASKS if t in tasks)  # canonical order


def make_samples(scene: Scene, mask: np.ndarray | None = None, tasks=None,
                 samples_per_scene: int | None = None) -> list[dict]:
    """Samples for one scene. `mask` (instance ids) is needed for grounding_point.

    samples_per_scene None: up to DEFAULT_PER_TASK per task; an int N: N samples spread over the
    tasks in turn (fewer if the scene offers fewer)."""
    tasks = check_tasks(tasks)
    names = [o.name for o in scene.objects]
    askable = [o for o in scene.objects if well_seen(o, scene.camera) and names.count(o.name) == 1]
    pools = {}
    for task in tasks:
        rng = np.random.default_rng([_scene_key(scene), TASKS.index(task), 0x5A7])
        limit = DEFAULT_PER_TASK[task] if samples_per_scene is None else samples_per_scene
        pools[task] = _GENERATORS[task](scene, askable, rng, limit, mask)
    if samples_per_scene is None:
        chosen = {t: pools[t] for t in tasks}
    else:
        chosen = {t: [] for t in tasks}
        taken = 0
        for k in itertools.count():
            progressed = False
            for t in tasks:
                if taken < samples_per_scene and k < len(pools[t]):
                    chosen[t].append(pools[t][k])
                    taken += 1
                    progressed = True
            if not progressed or taken >= samples_per_scene:
                break
    out = []
    for task in tasks:
        for k, (messages, answer, meta) in enumerate(chosen[task]):
            out.append({"id": f"{scene.scene_id}-{task}-{k}", "image": scene.files.get("image", ""),
                        "images": [scene.files.get("image", "")], "messages": messages, "task": task,
                        "answer": answer, "scene": f"scenes/{scene.scene_id}.json", "meta": {**meta, "seed": scene.seed}})
    return out


def _scene_key(scene: Scene) -> int:
    return scene.seed if scene.seed is not None else zlib.crc32(scene.scene_id.encode())


def _chat(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": "<|image_1|>\n" + question}, {"role": "assistant", "content": answer}]


def _pick(rng, options):
    i = int(rng.integers(len(options)))
    return i, options[i]


def _diverse(rng, candidates: list, key, n: int) -> list:
    """n candidates, spread over the groups given by key (round robin over shuffled groups)."""
    groups: dict = {}
    for c in candidates:
        groups.setdefault(key(c), []).append(c)
    order = list(groups)
    rng.shuffle(order)
    for g in order:
        rng.shuffle(groups[g])
    out = []
    for k in itertools.count():
        row = [groups[g][k] for g in order if k < len(groups[g])]
        if not row:
            break
        out.extend(row)
    return out[:n]


def _pairs(objs):
    return [(a, b) for a in objs for b in objs if a is not b]


def _relation_yesno(scene, objs, rng, n, mask):
    cands = [(a, b, rel) for a, b in _pairs(objs) for rel in ("left", "front", "above", "bigger", "taller", "wider")
             if facts.relation(scene, a, b, rel) is True]
    out = []
    for a, b, rel in _diverse(rng, cands, lambda c: c[2], n):
        # the fact "a rel b" is also "b opp a": state it either way, so that neither the relation
        # word nor the order of the names tells the answer; then ask it (yes) or its opposite (no)
        if rng.random() < 0.5:
            a, b, rel = b, a, facts.OPPOSITE[rel]
        truth = bool(rng.random() < 0.5)
        asked = rel if truth else facts.OPPOSITE[rel]
        qs = T.YESNO_QUESTIONS + (T.YESNO_VIEW_QUESTIONS if rel in ("left", "right", "front", "behind") else ())
        qi, q = _pick(rng, qs)
        ai, ans = _pick(rng, T.YES_ANSWERS if truth else T.NO_ANSWERS)
        f = {"a": a.name, "b": b.name, "rel": T.REL_PHRASE[asked], "opp": T.REL_PHRASE[facts.OPPOSITE[asked]]}
        out.append((_chat(q.format(**f), ans.format(**f)), {"type": "yesno", "value": truth},
                    {"relation": asked, "subject": a.name, "object": b.name, "subject_id": a.mask_id,
                     "object_id": b.mask_id, "template": qi, "answer_template": ai}))
    return out


def _relation_choice(scene, objs, rng, n, mask):
    cands = []
    for a, b in itertools.combinations(objs, 2):
        for rel in facts.RELATIONS:
            r = facts.relation(scene, a, b, rel)
            if r is not None:
                cands.append(("pair", rel, [a, b], a if r else b))
    if len(objs) >= 3:
        for rel in facts.RELATIONS:
            for _ in range(4):
                k = int(rng.integers(3, min(4, len(objs)) + 1))
                group = [objs[i] for i in sorted(rng.choice(len(objs), size=k, replace=False))]
                best = facts.extreme(scene, group, rel)
                if best is not None:
                    cands.append(("superlative", rel, group, best))
                    break
    out = []
    for form, rel, group, best in _diverse(rng, cands, lambda c: (c[0], c[1]), n):
        options = list(group)
        rng.shuffle(options)
        letters = "ABCD"[:len(options)]
        if form == "pair":
            qi, q = _pick(rng, T.CHOICE_PAIR_QUESTIONS)
            q = q.format(rel=T.CHOICE_PAIR_PHRASE[rel], a=options[0].name, b=options[1].name)
        else:
            qi, q = _pick(rng, T.CHOICE_SUPERLATIVE_QUESTIONS)
            q = q.format(rel=T.CHOICE_SUPERLATIVE[rel])
        _, instruction = _pick(rng, T.CHOICE_INSTRUCTIONS)
        lines = "\n".join(f"{letter}. {o.name}" for letter, o in zip(letters, options))
        right = options.index(best)
        ai, ans = _pick(rng, T.CHOICE_ANSWERS)
        out.append((_chat(f"{q}\n{lines}\n{instruction}", ans.format(letter=letters[right], name=best.name)),
                    {"type": "choice", "options": [o.name for o in options], "value": right},
                    {"relation": rel, "form": form, "option_ids": [o.mask_id for o in options], "template": qi,
                     "answer_template": ai}))
    return out


def _unit(rng, value_m: float) -> str:
    units = [u for u in UNITS if u != "ft" or value_m >= 0.3]
    return units[int(rng.integers(len(units)))]


def _quantity_sample(rng, questions, answers, fields, value, unit, quantity, meta):
    qi, q = _pick(rng, questions)
    if rng.random() < 0.4:
        q = f"{q} Answer {T.UNIT_HINTS[unit]}."
    ai, ans = _pick(rng, answers)
    text = format_quantity(value, unit, long=bool(rng.random() < 0.5))
    return (_chat(q.format(**fields), ans.format(q=text, **fields)),
            {"type": "quantity", "value_m": round(value, 4), "unit": unit, "quantity": quantity},
            {**meta, "template": qi, "answer_template": ai, "text": text})


def _distance(scene, objs, rng, n, mask):
    cands = []
    for a, b in itertools.combinations(objs, 2):
        for kind in T.DISTANCE_QUESTIONS:
            d = facts.distance(a, b, kind)
            if kind != "vertical_distance" or d >= 0.02:
                cands.append((a, b, kind, d))
    out = []
    for a, b, kind, d in _diverse(rng, cands, lambda c: c[2], n):
        if rng.random() < 0.5:
            a, b = b, a
        hi, lo = (a, b) if a.center[2] >= b.center[2] else (b, a)
        fields = {"a": a.name, "b": b.name, "hi": hi.name, "lo": lo.name}
        out.append(_quantity_sample(rng, T.DISTANCE_QUESTIONS[kind], T.DISTANCE_ANSWERS[kind], fields, d,
                                    _unit(rng, d), kind, {"subject": a.name, "object": b.name,
                                                          "subject_id": a.mask_id, "object_id": b.mask_id}))
    return out


def _size(scene, objs, rng, n, mask):
    cands = [(a, dim) for a in objs for dim in ("height", "width")]
    out = []
    for a, dim in _diverse(rng, cands, lambda c: c[1], n):
        value = a.height if dim == "height" else a.width
        out.append(_quantity_sample(rng, T.SIZE_QUESTIONS[dim], T.SIZE_ANSWERS[dim], {"a": a.name}, value,
                                    _unit(rng, value), dim, {"subject": a.name, "subject_id": a.mask_id}))
    return out


def _clock(scene, objs, rng, n, mask):
    cands = [(a, b, h) for a, b in _pairs(objs) if (h := facts.clock_direction(scene, a, b)) is not None]
    out = []
    for a, b, h in _diverse(rng, cands, lambda c: c[2], n):
        qi, q = _pick(rng, T.CLOCK_QUESTIONS)
        ai, ans = _pick(rng, T.CLOCK_ANSWERS)
        f = {"a": a.name, "b": b.name, "h": h}
        out.append((_chat(q.format(**f), ans.format(**f)), {"type": "clock", "value": h},
                    {"subject": a.name, "object": b.name, "subject_id": a.mask_id, "object_id": b.mask_id,
                     "template": qi, "answer_template": ai}))
    return out


def _plural(shape: str) -> str:
    kind = catalog.KIND_BY_SHAPE.get(shape)
    return kind.plural if kind else shape + "s"


def _categories(scene: Scene):
    """(key, singular noun, plural noun, predicate) for shapes, colours and colour+shape."""
    objs = [o for o in scene.objects if o.role == "object"]
    cats = {}
    for o in objs:
        cats[("shape", o.shape)] = (o.shape, _plural(o.shape), lambda x, s=o.shape: x.shape == s)
        if o.colour:
            cats[("colour", o.colour)] = (f"{o.colour} object", f"{o.colour} objects",
                                          lambda x, c=o.colour: x.colour == c)
            cats[("name", o.name)] = (o.name, f"{o.colour} {_plural(o.shape)}",
                                      lambda x, c=o.colour, s=o.shape: x.colour == c and x.shape == s)
    return cats


def _count_of(scene: Scene, pred) -> int | None:
    """Well-seen objects matching pred, or None when one of them is only partly seen."""
    n = 0
    for o in scene.objects:
        if o.role != "object" or not pred(o):
            continue
        if well_seen(o, scene.camera):
            n += 1
        elif o.visible_pixels > 0:
            return None
    return n


def _counting(scene, objs, rng, n, mask):
    cands = []
    for key, (singular, plural, pred) in sorted(_categories(scene).items()):
        c = _count_of(scene, pred)
        if c is not None and c > 0:
            cands.append((key, singular, plural, c))
    present = {o.shape for o in scene.objects}
    absent = sorted(k.shape for k in catalog.KINDS if k.shape not in present)
    if absent and rng.random() < 0.25:
        s = absent[int(rng.integers(len(absent)))]
        cands.append((("shape", s), s, _plural(s), 0))
    out = []
    for key, singular, plural, c in _diverse(rng, cands, lambda c: min(c[3], 3), n):
        qi, q = _pick(rng, T.COUNT_QUESTIONS)
        answers = T.COUNT_NONE if c == 0 else T.COUNT_ONE if c == 1 else T.COUNT_ANSWERS
        ai, ans = _pick(rng, answers)
        out.append((_chat(q.format(noun=plural), ans.format(n=c, noun=plural, singular=singular)),
                    {"type": "count", "value": c},
                    {"category": key[0], "value": key[1], "noun": plural, "template": qi, "answer_template": ai}))
    return out


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _existence(scene, objs, rng, n, mask):
    everything = [o for o in scene.objects if o.role == "object"]
    present_names = {o.name for o in everything}
    present_shapes = {o.shape for o in everything}
    shapes = [k.shape for k in catalog.KINDS]
    colours = catalog.COLOUR_NAMES
    positives = [("name", o.name) for o in objs] + [
        ("shape", s) for s in sorted(present_shapes) if _count_of(scene, lambda x, s=s: x.shape == s)]
    negatives = []
    for _ in range(n):
        kind = ("random", "popular", "adversarial")[int(rng.integers(3))]
        if kind == "random":
            name = f"{colours[int(rng.integers(len(colours)))]} {shapes[int(rng.integers(len(shapes)))]}"
            if name not in present_names:
                negatives.append(("name", name, "random"))
        elif kind == "popular":
            ranked = sorted((k for k in catalog.KINDS if k.shape not in present_shapes and k.weight > 0),
                            key=lambda k: (-k.weight, k.shape))[:4]
            if ranked:
                negatives.append(("shape", ranked[int(rng.integers(len(ranked)))].shape, "popular"))
        elif everything:
            o = everything[int(rng.integers(len(everything)))]
            if o.colour and rng.random() < 0.5:  # same shape, another colour
                name = f"{colours[int(rng.integers(len(colours)))]} {o.shape}"
            else:  # same colour, another shape
                name = f"{o.colour or colours[0]} {shapes[int(rng.integers(len(shapes)))]}"
            if name not in present_names:
                negatives.append(("name", name, "adversarial"))
    rng.shuffle(positives)
    out = []
    for i in range(n):
        pool_yes = positives[i // 2] if i // 2 < len(positives) else None
        pool_no = negatives[i // 2] if i // 2 < len(negatives) else None
        pick = pool_yes if (i % 2 == 0 and pool_yes) or not pool_no else pool_no
        if pick is None:
            break
        truth = pick is pool_yes
        level, name = pick[0], pick[1]
        qi, q = _pick(rng, T.EXIST_QUESTIONS)
        ai, ans = _pick(rng, T.EXIST_YES if truth else T.EXIST_NO)
        f = {"name": name, "art": _article(name)}
        out.append((_chat(q.format(**f), ans.format(**f)),
                    {"type": "yesno", "value": truth, "negative": None if truth else pick[2]},
                    {"query": name, "level": level, "template": qi, "answer_template": ai}))
    return out


def _groups_by_shape(scene: Scene, objs):
    """Shapes with at least two objects, all of them well seen (so "all the mugs" is decidable)."""
    out = []
    for shape in sorted({o.shape for o in objs}):
        members = [o for o in scene.objects if o.role == "object" and o.shape == shape and o.visible_pixels > 0]
        if len(members) >= 2 and all(o in objs for o in members):
            out.append((shape, members))
    return out


def _grounding_box(scene, objs, rng, n, mask):
    W, H = scene.camera.width, scene.camera.height
    entry = lambda o: {"label": o.name, "bbox_2d": normalize_box(o.bbox_2d_visible, W, H)}  # noqa: E731
    cands = [("one", o.name, [o]) for o in objs] + [("all", s, m) for s, m in _groups_by_shape(scene, objs)]
    out = []
    for form, label, members in _diverse(rng, cands, lambda c: c[0], n):
        value = [entry(o) for o in members]
        qi, q, text = _grounding_question(rng, form, label, value, T.BOX_QUESTIONS, T.BOX_ALL_QUESTIONS)
        out.append((_chat(q, text), {"type": "boxes", "value": value},
                    {"form": form, "object_ids": [o.mask_id for o in members], "template": qi}))
    return out


def _grounding_question(rng, form, label, value, one_questions, all_questions):
    """(template index, question, JSON answer) for one named object or all objects of a shape."""
    if form == "one":
        qi, q = _pick(rng, one_questions)
        return qi, q.format(a=label), json.dumps(value[0])
    qi, q = _pick(rng, all_questions)
    return qi, q.format(plural=_plural(label), singular=label), json.dumps(value)


def _grounding_point(scene, objs, rng, n, mask):
    if mask is None:
        return []
    W, H = scene.camera.width, scene.camera.height
    points = {}
    for o in objs:
        pt = interior_point(mask == o.mask_id)
        if pt is not None:
            points[o.mask_id] = [int(min(1000, max(0, round(pt[0] / W * 1000)))),
                                 int(min(1000, max(0, round(pt[1] / H * 1000))))]
    cands = [("one", o.name, [o]) for o in objs if o.mask_id in points] + [
        ("all", s, m) for s, m in _groups_by_shape(scene, objs) if all(o.mask_id in points for o in m)]
    out = []
    for form, label, members in _diverse(rng, cands, lambda c: c[0], n):
        value = [{"label": o.name, "point_2d": points[o.mask_id]} for o in members]
        qi, q, text = _grounding_question(rng, form, label, value, T.POINT_QUESTIONS, T.POINT_ALL_QUESTIONS)
        out.append((_chat(q, text), {"type": "points", "value": value, "mask": scene.files.get("mask", ""),
                                     "mask_ids": [o.mask_id for o in members]},
                    {"form": form, "object_ids": [o.mask_id for o in members], "template": qi}))
    return out


def _robot_action(scene, objs, rng, n, mask):
    cands = robot.action_candidates(scene, objs)
    return [robot.robot_conversation(scene, c, rng) for c in _diverse(rng, cands, lambda c: c["action"], n)]


_GENERATORS = {"relation_yesno": _relation_yesno, "relation_choice": _relation_choice, "distance": _distance,
               "size": _size, "direction_clock": _clock, "counting": _counting, "existence": _existence,
               "grounding_box": _grounding_box, "grounding_point": _grounding_point, "robot_action": _robot_action}

