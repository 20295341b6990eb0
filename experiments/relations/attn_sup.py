"""Attention supervision for binding names to places (a diagnosis, not part of the package).

    python attn_sup.py MODEL_DIR TABLE OUT_DIR [--steps N] [--layers 2,3] [--heads-per-layer N] [--weight W]

TABLE: a "point" or "pointrel" table of make_shapes.py (rows carry the shapes' boxes). Besides the
language loss (and the position loss at 0.2), attention heads of chosen decoder layers are trained to
put their attention, at the tokens that predict the column and row digits, on the image tokens under
the named shape: loss = -log(attention mass on those tokens), averaged over the supervised queries.
On a relation row (two named shapes) the supervised heads alternate between the first and the second
named shape, at the tokens that predict the first two answer tokens (the yes/no or the choice); on a
reasoned one ("cot", answers that give both shapes' places first) every supervised head attends to the
shape whose column and row digits the token predicts.
Rows marked "plain" (or with neither a box nor named shapes: `mix_table.py`) get the language loss only,
and with `--teacher DIR` also `--distill-weight` x the KL divergence from that model's next-token
distribution at their answer tokens (to keep or bring back the skills the teacher has).
This hands the decoder the step the plateau is about (finding the named shape among several);
whether the digits follow is what the run shows. Saves OUT_DIR/model (a model folder) and
OUT_DIR/metrics.jsonl (loss, attention loss, attention mass on the named shape).
"""
import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import phi3v_spatial.model.language as language
from phi3v_spatial.model import Phi3VForCausalLM
from phi3v_spatial.processing import Phi3VProcessor
from phi3v_spatial.train.collator import Collator, StackedLabels, pad_batch
from phi3v_spatial.train.data import load_table
from phi3v_spatial.train.loop import LossModule
from phi3v_spatial.train.mask_aux import IGNORE, EngineMaskLabels, MaskAuxHeads, _vocab, token_labels
from phi3v_spatial.train.position_aux import PositionAuxHeads, PositionLabels

from make_shapes import relation_of

CAPTURE = {"calls": 0, "layers": (), "qk": {}}
_attend = language.attend


def capturing_attend(q, k, v, mask, impl, **kw):
    """language.attend, keeping q and k of the chosen layers (calls are counted per forward)."""
    if CAPTURE["calls"] in CAPTURE["layers"]:
        CAPTURE["qk"][CAPTURE["calls"]] = (q, k)
    CAPTURE["calls"] += 1
    return _attend(q, k, v, mask, impl, **kw)


def object_tokens(row: dict, box: list, num_crops: int, order: str) -> torch.Tensor:
    """(num_image_tokens,) bool: tokens whose cell is mostly the shape in `box`."""
    W, H = row["size"]
    x, y, w, h = box
    mask = np.zeros((H, W), dtype=np.int32)
    mask[y:y + h + 1, x:x + w + 1] = 1
    return token_labels(mask, {1: (1, 1)}, num_crops, order)[:, 0] == 1


def shapes_of(rows: list[dict]) -> list[dict]:
    """The image's shapes ({"name", "box"}): from a row's "objects", or from its point rows."""
    if "objects" in rows[0]:
        return rows[0]["objects"]
    return [{"name": r["question"].split("Where is the ")[1].split("?")[0], "box": r["box"]} for r in rows]


def shape_labels(rows: list[dict], num_crops: int, order: str) -> torch.Tensor:
    """(num_image_tokens, 2) colour/kind labels of one image's tokens from the boxes of all its shapes
    (the mask loss's labels, drawn from the table instead of engine masks)."""
    colours, kinds = _vocab()
    W, H = rows[0]["size"]
    mask, table = np.zeros((H, W), dtype=np.int32), {}
    for i, o in enumerate(shapes_of(rows), 1):
        x, y, w, h = o["box"]
        mask[y:y + h + 1, x:x + w + 1] = i
        name = o["name"].split()
        table[i] = (colours.index(name[0]) + 1, kinds.index(name[-1]) + 1)
    return token_labels(mask, table, num_crops, order)


def attention_targets(row: dict, by_image: dict) -> list[list]:
    """Boxes the supervised heads attend to, one per role: the named shape, or the two named shapes."""
    if "named" in row:
        boxes = {o["name"]: o["box"] for o in shapes_of(by_image[row["image"]])}
        return [boxes[n] for n in row["named"]]
    if "box" in row:
        return [row["box"]]
    return []  # a plain row (mix_table.py): the language loss only


def query_positions(row: dict, labels: list, digits: set) -> list[tuple[int, int | None]]:
    """(position, role) pairs whose next-token prediction is supervised: the digits of a point answer;
    the first two answer tokens of a relation answer (role None: the heads alternate between the
    two shapes); the digits of a reasoned relation answer ("cot": the first two digits are the first
    named shape's column and row, role 0, the next two the second's, role 1)."""
    answer = [t for t in range(1, len(labels)) if labels[t] != -100]
    if row.get("drill") or row.get("plain"):  # places from the question's text / a plain row
        return []
    if row.get("size_cot"):  # "The {a} is 3 wide, the {b} 2 wide": one digit per named object
        return [(t - 1, min(j, 1)) for j, t in enumerate(t for t in answer if labels[t] in digits)]
    if row.get("cot"):
        return [(t - 1, int(j >= 2)) for j, t in enumerate(t for t in answer if labels[t] in digits)]
    if "named" in row:
        return [(t - 1, None) for t in answer[:2]]
    return [(t - 1, 0) for t in answer if labels[t] in digits]


def decision_to_digits(row: dict, labels: list, digits: set, colon: int) -> tuple[torch.Tensor, list[int]]:
    """On a reasoned answer: the two digits the decision compares (the columns for left/right, the
    rows for above/below) and the positions that predict the decision (the first two tokens after
    the last colon)."""
    answer = [t for t in range(1, len(labels)) if labels[t] != -100]
    placed = [t for t in answer if labels[t] in digits]
    last_colon = max(t for t in answer if labels[t] == colon)
    if row.get("size_cot"):  # the two sizes
        return torch.tensor(placed[:2]), [t - 1 for t in answer if t > last_colon][:2]
    _, axis = relation_of(row["question"])
    return torch.tensor([placed[axis], placed[2 + axis]]), [t - 1 for t in answer if t > last_colon][:2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("table")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--layers", default="2", help="comma-separated decoder layers to supervise")
    ap.add_argument("--heads-per-layer", type=int, default=1, help="supervise heads 0..N-1 of each")
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--colour-aux-weight", type=float, default=0.0,
                    help="also the colour/kind loss on every shape's tokens (keeps colour in the features)")
    ap.add_argument("--heads", help="position heads to start from (a previous run's position_aux_heads.safetensors)")
    ap.add_argument("--decision-to-digits", action="store_true",
                    help='on "cot" rows also pull the heads, at the tokens that predict the decision, onto the two '
                         "digits it compares (the columns for left/right, the rows for above/below)")
    ap.add_argument("--mask-heads", help="colour/kind heads to start from (a previous run's mask_aux_heads.safetensors)")
    ap.add_argument("--engine-masks", action="store_true",
                    help="colour/kind labels from the data engine's masks (tables of engine_table.py) instead of the boxes")
    ap.add_argument("--teacher", help="a model folder whose answer distributions the plain rows are pulled to")
    ap.add_argument("--distill-weight", type=float, default=1.0)
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(a.seed)
    language.attend = capturing_attend
    CAPTURE["layers"] = tuple(int(x) for x in a.layers.split(","))
    model = Phi3VForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
    processor = Phi3VProcessor.from_pretrained(a.model)
    crops, order = processor.num_crops, model.config.hd_transform_order
    heads = PositionAuxHeads(model.config.hidden_size)
    if a.heads:
        heads.load_state_dict(load_file(a.heads))
    collator = Collator(processor, image_labels=StackedLabels([PositionLabels(crops, order)]))
    aux, weights = {"position": heads}, {"position": 0.2}
    if a.colour_aux_weight:
        aux["mask"], weights["mask"] = MaskAuxHeads(model.config.hidden_size), a.colour_aux_weight
        if a.mask_heads:
            aux["mask"].load_state_dict(load_file(a.mask_heads))
    module = LossModule(model, torch.nn.ModuleDict(aux), weights)
    teacher, student_logits = None, {}
    if a.teacher:
        teacher = Phi3VForCausalLM.from_pretrained(a.teacher, torch_dtype=torch.float32).eval().requires_grad_(False)
        # the LossModule's LM head runs on the target positions only (row-major): keep its output
        model.lm_head.register_forward_hook(lambda mod, inp, out: student_logits.__setitem__("logits", out))
    table = Path(a.table)
    rows = [json.loads(line) for line in open(table)]
    by_image = {}
    for r in rows:
        by_image.setdefault(r["image"], []).append(r)
    samples = load_table(table).samples
    digits = {processor.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
    colon = processor.tokenizer.convert_tokens_to_ids(":")
    colour_labels = {}
    engine_labels = EngineMaskLabels(crops, order)
    params = list(model.parameters()) + [p for h in aux.values() for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
    rng = random.Random(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "metrics.jsonl", "w")
    model.train()
    for step in range(1, a.steps + 1):
        idx = [rng.randrange(len(rows)) for _ in range(a.batch)]
        enc = [collator.encode(samples[i]) for i in idx]
        if a.colour_aux_weight:
            for b, i in enumerate(idx):
                image = rows[i]["image"]
                if image not in colour_labels:  # the image's labels, made once
                    colour_labels[image] = (engine_labels(samples[i]["images"][0]) if a.engine_masks
                                            else shape_labels(by_image[image], crops, order))
                extra = colour_labels[image]
                if extra is None:  # an image without engine masks (a derived view): no colour/kind labels
                    extra = torch.full((enc[b]["image_token_labels"].shape[0], 2), IGNORE, dtype=torch.long)
                enc[b]["image_token_labels"] = torch.cat([enc[b]["image_token_labels"], extra], dim=1)
        batch = pad_batch(enc, collator.pad_id)
        CAPTURE["calls"] = 0
        loss_sum = module(**batch)
        n_targets = int((batch["labels"][:, 1:] != -100).sum())
        lm = loss_sum / n_targets
        attn_losses, masses = [], []
        for b, i in enumerate(idx):
            ids = torch.tensor(enc[b]["input_ids"])
            labels = enc[b]["labels"]
            image_pos = (ids < 0).nonzero().flatten()
            targets = [image_pos[object_tokens(rows[i], box, crops, order)] for box in attention_targets(rows[i], by_image)]
            queries = query_positions(rows[i], labels, digits)
            if a.decision_to_digits and rows[i].get("cot"):
                compared, decision = decision_to_digits(rows[i], labels, digits, colon)
                targets.append(compared)
                queries = queries + [(t, len(targets) - 1) for t in decision]
            for q, k in CAPTURE["qk"].values():  # (B, H, T, d), (B, KVH, T, d) after RoPE
                for head in range(a.heads_per_layer):
                    kh = head * k.shape[1] // q.shape[1]
                    for t, role in queries:
                        target = targets[head % len(targets) if role is None else role]
                        if not len(target):  # a shape too thin to fill a token cell
                            continue
                        scores = (k[b, kh, : t + 1] @ q[b, head, t]) / math.sqrt(q.shape[-1])
                        logp = torch.log_softmax(scores.float(), dim=-1)
                        lp = torch.logsumexp(logp[target], dim=0)
                        attn_losses.append(-lp)
                        masses.append(float(lp.detach().exp()))
        attn = torch.stack(attn_losses).mean() if attn_losses else lm.new_zeros(())
        loss = lm + a.weight * attn
        kd = lm.new_zeros(())
        if teacher is not None:
            keep = batch["labels"][:, 1:] != -100
            plain = torch.tensor([bool(rows[i].get("plain")) for i in idx])[:, None].expand_as(keep)[keep]
            if plain.any():
                with torch.no_grad():
                    h, _ = teacher.model(batch["input_ids"], batch["attention_mask"], None, batch.get("pixel_values"), batch.get("image_sizes"))
                    t_logp = torch.log_softmax(teacher.lm_head(h[:, :-1][keep][plain]).float(), dim=-1)
                s_logp = torch.log_softmax(student_logits["logits"][plain].float(), dim=-1)
                kd = (t_logp.exp() * (t_logp - s_logp)).sum() / n_targets  # KL(teacher || student), per target
                loss = loss + a.distill_weight * kd
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0 or step == a.steps:
            rec = {"step": step, "loss": float(lm.detach()), "attn_loss": float(attn.detach()), "attn_mass": float(np.mean(masses)) if masses else None,
                   "position_aux": module.last_aux.get("position"), "mask_aux": module.last_aux.get("mask"),
                   "distill": float(kd.detach())}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(rec, flush=True)
    model.save_pretrained(out / "model")
    save_file(heads.state_dict(), str(out / "position_aux_heads.safetensors"))
    if "mask" in aux:
        save_file(aux["mask"].state_dict(), str(out / "mask_aux_heads.safetensors"))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
              "generation_config.json"):
        src = Path(a.model) / f
        if src.is_file():
            (out / "model" / f).write_bytes(src.read_bytes())


if __name__ == "__main__":
    main()
