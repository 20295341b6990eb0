"""Checkpoint loading: time and peak memory for a ~1.2 GB float32 checkpoint, ours vs the original.

Peak RSS growth while loading and running one forward (so every weight is touched) must stay under
1.3x the weights' size: loading builds the model on the meta device and assigns tensors read from
the safetensors files one at a time (plain reads into fresh memory), so the weights are never held
twice. The baseline is taken after torch's one-time ~76 MB set-up of its first nn.Embedding.

    python benchmarks/bench_load.py [--checkpoint DIR] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import env_info, median, print_result, reference_available, run_reference  # noqa: E402

PROBE = textwrap.dedent("""
    import json, os, sys, time, torch
    from phi3v_spatial.model import Phi3VForCausalLM
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    def hwm():
        return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024
    with torch.device("meta"):
        torch.nn.Embedding(2, 2)  # torch's one-time set-up, paid before the baseline
    base = rss()
    t = time.perf_counter()
    m = Phi3VForCausalLM.from_pretrained(sys.argv[1])
    load = time.perf_counter() - t
    after_load = hwm()
    with torch.no_grad():
        m(input_ids=torch.tensor([[1, 2, 3]]))
    size = sum(p.numel() * p.element_size() for p in m.parameters()) / 2**20
    print(json.dumps(dict(load_seconds=load, base_mib=base, peak_after_load_mib=after_load, peak_mib=hwm(), weights_mib=size)))
""")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="/tmp/phi3v-bench-1g")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    ck = Path(args.checkpoint)
    if not (ck / "config.json").is_file():
        from phi3v_spatial.random_init import make_random_checkpoint, random_config

        cfg = random_config(hidden_size=1024, intermediate_size=2816, num_hidden_layers=20, num_attention_heads=16)
        make_random_checkpoint(ck, cfg, max_shard_size="300MB")
    runs = []
    for _ in range(args.repeat):
        out = subprocess.run([sys.executable, "-c", PROBE, str(ck)], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ours = {k: median([r[k] for r in runs]) for k in runs[0]}
    ours["peak_growth_over_weights"] = (ours["peak_mib"] - ours["base_mib"]) / ours["weights_mib"]
    print(f"ours: load {ours['load_seconds']:.2f} s, weights {ours['weights_mib']:.0f} MiB, "
          f"peak RSS growth {ours['peak_mib'] - ours['base_mib']:.0f} MiB = {ours['peak_growth_over_weights']:.2f}x the weights (target <= 1.3x)")
    result = dict(benchmark="load", checkpoint=str(ck), ours=ours, env=env_info())
    if reference_available():
        ref = [run_reference("forward", "--checkpoint", str(ck), "--prompt", "Hello", "--out", "/tmp/phi3v-bench-ref.npz")
               for _ in range(args.repeat)]
        r = dict(load_seconds=median([x["load_seconds"] for x in ref]), peak_rss_mib=median([x["peak_rss_mib"] for x in ref]))
        result["reference"] = r
        result["load_speedup"] = r["load_seconds"] / ours["load_seconds"]
        result["peak_rss_ratio_ours_over_reference"] = ours["peak_mib"] / r["peak_rss_mib"]
        print(f"original: load {r['load_seconds']:.2f} s, peak RSS {r['peak_rss_mib']:.0f} MiB -> load speedup "
              f"{result['load_speedup']:.1f}x, peak RSS ours/original {result['peak_rss_ratio_ours_over_reference']:.2f}")
    else:
        print("original implementation not set up (bash ../shared/tools/reference/setup.sh); baseline skipped")
    result["pass"] = ours["peak_growth_over_weights"] <= 1.3
    print_result(result)


if __name__ == "__main__":
    main()
