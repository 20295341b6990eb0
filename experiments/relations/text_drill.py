"""Can the embedded model's decoder compare two stated places at all? Text only, no image.

    python text_drill.py OUT_DIR [--init scratch|MODEL_DIR] [--steps N] [--batch B] [--lr LR]
                         [--answer short|cot|decide] [--task places|bare]
                         [--schedule balanced|skewed|curriculum] [--eval-every N] [--threads N]

Trains the decoder of the embedded architecture (from scratch, or from a model folder's weights) on
prompts "The red cube is at column 3, row 5, the blue ball at column 1, row 2. Is the red cube left of
the blue ball?" with answer "yes"/"no" (short) or the places restated then the decision (cot), loss on
the answer only. Every --eval-every steps: greedy decision accuracy on 1,000 held-out drills (a
separate seed; all four relation words; both answers equally often), by relation word and by the
distance between the two compared digits. Writes OUT_DIR/metrics.jsonl and OUT_DIR/model.
"""
import argparse
import json
import random
import time
from pathlib import Path

import torch

from phi3v_spatial.model import Phi3VForCausalLM
from phi3v_spatial.random_init import random_config
from phi3v_spatial.spatial import templates as TEMPLATES
from phi3v_spatial.spatial.catalog import COLOUR_NAMES, KIND_BY_SHAPE
from phi3v_spatial.train.recipes import TINY_SPATIAL_ARCH, init_for_training
from phi3v_spatial.weights import load_pretrained, save_pretrained
from tokenizers import Tokenizer

from make_shapes import OPP, SHAPES

ASSETS = Path(__file__).resolve().parents[2] / "src/phi3v_spatial/assets/tiny-spatial"
RELATIONS = {"left of": (0, True), "right of": (0, False), "above": (1, True), "below": (1, False)}
KINDS = sorted(KIND_BY_SHAPE)
TASK = "places"
SCHEDULE = {"step": 0, "kind": "balanced"}
CURRICULUM_STEPS = (300, 700, 1100)


def relation_weights(words: list[str]) -> list[float]:
    """How often each relation word is drawn at the current step: "balanced" (uniform), "skewed" (the
    first word of each pair three times as often as its opposite), "curriculum" (one word at a time,
    each added at the next of CURRICULUM_STEPS; uniform over the words introduced so far)."""
    kind, step = SCHEDULE["kind"], SCHEDULE["step"]
    first = [w in ("left of", "left", "above", "less") for w in words]
    if kind == "skewed":
        return [3.0 if f else 1.0 for f in first]
    if kind == "curriculum":  # one new word at a time: left (or less), + its opposite, + above, + below
        order = next(o for o in (("less", "more"), ("left of", "right of", "above", "below"), ("left", "right", "above", "below"))
                     if o[0] in words)
        known = order[:1 + sum(step > s for s in CURRICULUM_STEPS)]
        return [1.0 if w in known else 0.0 for w in words]
    return [1.0] * len(words)


def bare(rng: random.Random) -> tuple[str, str, bool, str, int]:
    """The comparison alone: "Is 3 less than 5?" (a sanity task for the same decoder)."""
    rel = rng.choices(["less", "more"], relation_weights(["less", "more"]))[0]
    a, b = rng.sample(range(10), 2)
    want = (a < b) == (rel == "less")
    return f"Is {a} {rel} than {b}?", "yes" if want else "no", want, rel, abs(a - b)


def two_names(rng: random.Random, kinds) -> tuple[str, str]:
    a, b = "x", "x"
    while a == b:
        a, b = (f"{rng.choice(COLOUR_NAMES)} {rng.choice(kinds)}" for _ in range(2))
    return a, b


def two_places(rng: random.Random, axis: int, first_smaller: bool, want: bool) -> tuple[list, list]:
    """Random (column, row) places of two shapes, different on `axis`, for which "the first is
    smaller there" == `first_smaller` exactly when `want`."""
    pa, pb = [rng.randrange(10), rng.randrange(10)], [rng.randrange(10), rng.randrange(10)]
    while pa[axis] == pb[axis] or ((pa[axis] < pb[axis]) == first_smaller) != want:
        pa[axis], pb[axis] = rng.randrange(10), rng.randrange(10)
    return pa, pb


def decide(rng: random.Random) -> tuple[str, str, bool, str, int]:
    """The decision step of make_shapes.py's reasoned answers, in text: the question as the 2D
    tables ask it (the engine's templates), the answer "The {a} is at column C, row R, the {b} at
    column C, row R: yes." with random places, trained on the decision only (see encode)."""
    a, b = two_names(rng, SHAPES)
    words = ["left", "right", "above", "below"]
    rel = rng.choices(words, relation_weights(words))[0]
    axis, first_smaller = (0 if rel in ("left", "right") else 1), rel in ("left", "above")
    want = rng.random() < 0.5
    pa, pb = two_places(rng, axis, first_smaller, want)
    f = {"a": a, "b": b, "rel": TEMPLATES.REL_PHRASE[rel], "opp": TEMPLATES.REL_PHRASE[OPP[rel]]}
    q = rng.choice(TEMPLATES.YESNO_QUESTIONS).format(**f)
    reply = f"The {a} is at column {pa[0]}, row {pa[1]}, the {b} at column {pb[0]}, row {pb[1]}: {'yes' if want else 'no'}."
    return q, reply, want, rel, abs(pa[axis] - pb[axis])


def drill(rng: random.Random, answer: str) -> tuple[str, str, bool, str, int]:
    """(prompt, answer, truth, relation, |difference| of the compared digits)."""
    if TASK == "bare":
        return bare(rng)
    if answer == "decide":
        return decide(rng)
    a, b = two_names(rng, KINDS)
    rel = rng.choices(sorted(RELATIONS), relation_weights(sorted(RELATIONS)))[0]
    axis, first_smaller = RELATIONS[rel]
    want = rng.random() < 0.5
    pa, pb = two_places(rng, axis, first_smaller, want)
    places = f"The {a} is at column {pa[0]}, row {pa[1]}, the {b} at column {pb[0]}, row {pb[1]}"
    decision = "yes" if want else "no"
    reply = decision if answer == "short" else f"{places}: {decision}."
    return f"{places}. Is the {a} {rel} the {b}?", reply, want, rel, abs(pa[axis] - pb[axis])


def encode(tok: Tokenizer, prompt: str, reply: str, answer: str) -> tuple[list[int], list[int]]:
    """Ids and labels (the reply's; for "decide" replies only from the decision on: the places it
    states are random here, and in the image tables they come from the image)."""
    p = tok.encode(f"<|user|>\n{prompt}<|end|>\n<|assistant|>\n", add_special_tokens=False).ids
    r = tok.encode(f"{reply}<|end|>", add_special_tokens=False).ids
    labels = list(r)
    if answer == "decide":
        labels[:len(r) - 3] = [-100] * (len(r) - 3)  # keep "▁yes|▁no", ".", "<|end|>"
    return [1] + p + r, [-100] * (1 + len(p)) + labels


def batch(tok, rng, n, answer):
    ids, labels = zip(*(encode(tok, *drill(rng, answer)[:2], answer) for _ in range(n)))
    L = max(map(len, ids))
    x = torch.full((n, L), 32000)
    y = torch.full((n, L), -100)
    m = torch.zeros((n, L), dtype=torch.long)
    for i, (a, b) in enumerate(zip(ids, labels)):
        x[i, :len(a)], y[i, :len(b)], m[i, :len(a)] = torch.tensor(a), torch.tensor(b), 1
    return x, y, m


def answer_loss(model, x, m, y):
    """Cross-entropy on the answer tokens, with the vocabulary projection only where it is needed
    (the full (B, L, 32064) logits would cost more than the 4-layer decoder)."""
    pos = (m.cumsum(1) - 1).clamp(min=0)
    h, _ = model.model(x, m, pos, None, None, None, None, None, 0, None, False)
    keep = y[:, 1:] != -100
    logits = model.lm_head(h[:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, y[:, 1:][keep])


@torch.no_grad()
def evaluate(model, tok, answer, n=1000, seed=12345):
    """Balanced held-out drills (every relation word equally often), whatever the training schedule.
    Greedy decision on held-out drills: for cot the places are teacher-forced (they are given in
    the prompt; the skill tested is the decision), so the decision token is read after them."""
    rng, kind = random.Random(seed), SCHEDULE["kind"]
    SCHEDULE["kind"] = "balanced"
    yes, no = tok.token_to_id("▁yes"), tok.token_to_id("▁no")
    by_rel, by_gap, right = {}, {}, 0
    model.eval()
    for start in range(0, n, 100):
        rows = [drill(rng, answer) for _ in range(100)]
        seqs = []
        for prompt, reply, *_ in rows:
            ids, _ = encode(tok, prompt, reply, answer)
            seqs.append(ids[:len(ids) - (2 if answer == "short" else 3)])  # up to the token before "▁yes|▁no"
        L = max(map(len, seqs))
        x = torch.full((len(seqs), L), 32000)
        m = torch.zeros_like(x)
        for i, s in enumerate(seqs):  # left-pad so every row's last position is its decision
            x[i, L - len(s):], m[i, L - len(s):] = torch.tensor(s), 1
        pos = (m.cumsum(1) - 1).clamp(min=0)
        logits = model(x, attention_mask=m, position_ids=pos, last_logits_only=True).logits[:, -1]
        pick = logits[:, yes] > logits[:, no]
        for (_, _, truth, rel, gap), p in zip(rows, pick.tolist()):
            ok = p == truth
            right += ok
            by_rel.setdefault(rel, []).append(ok)
            by_gap.setdefault(gap, []).append(ok)
    model.train()
    SCHEDULE["kind"] = kind
    f = lambda d: {k: round(sum(v) / len(v), 3) for k, v in sorted(d.items())}
    return {"acc": right / n, "by_relation": f(by_rel), "by_gap": f(by_gap)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--init", default="scratch")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--answer", choices=["short", "cot", "decide"], default="short")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", choices=["places", "bare"], default="places")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--schedule", choices=["balanced", "skewed", "curriculum"], default="balanced",
                    help="how often each relation word is drawn in training (see relation_weights)")
    args = ap.parse_args()
    global TASK
    TASK = args.task
    SCHEDULE["kind"] = args.schedule
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(ASSETS / "tokenizer.json"))
    if args.init == "scratch":
        model = init_for_training(Phi3VForCausalLM(random_config(**TINY_SPATIAL_ARCH)), args.seed)
    else:
        model = load_pretrained(args.init, dtype=torch.float32)
    params = [p for n, p in model.named_parameters() if "vision" not in n and "img_" not in n]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    rng = random.Random(args.seed)
    log = open(out / "metrics.jsonl", "w")
    t0, losses = time.time(), []
    for step in range(1, args.steps + 1):
        SCHEDULE["step"] = step
        x, y, m = batch(tok, rng, args.batch, args.answer)
        loss = answer_loss(model, x, m, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            rec = {"step": step, "loss": round(sum(losses) / len(losses), 4), "s": round(time.time() - t0),
                   **evaluate(model, tok, args.answer)}
            losses = []
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
    save_pretrained(model, out / "model", copy_aux_from=str(ASSETS) if args.init == "scratch" else args.init)


if __name__ == "__main__":
    main()
