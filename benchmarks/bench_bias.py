"""Bias-evaluation benchmark: building the counterfactual clips of `debias bias` against the model's own
forward pass over the same clips, on CPU.

    PYTHONPATH=. python benchmarks/bench_bias.py [--rows N] [--backbone r3d_18] [--out FILE]
    PYTHONPATH=. python benchmarks/bench_bias.py --quick          # narrow model, tiny clips (a smoke run)

The rows are moving-square shards (`write_pattern_shards`: the square is the person mask), written at the
model's input size. `build_s` is the job's own clip step (`make_build_fn` over the planned rows: JPEG
decode of each clip and its swap partner, SCUBA on stripes, SCUFO, background-only, human-only, action
swap), `forward_s` the job's own model step (`predict_built`) on every clip it built, after a discarded
warm-up batch. `ratio` = build_s / forward_s; the bar is 0.20. The gates are opened (every clip of every
kind is built) so that both sides cover the same clips. The last line printed is a JSON object with
every figure (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from debias.evaluation.counterfactual import GateConfig  # noqa: E402
from debias.evaluation.field_bias import (FieldMeasuresConfig, clip_kinds, make_build_fn, plan_rows,  # noqa: E402
                                          predict_built)
from debias.training.clips import write_pattern_shards  # noqa: E402
from debias.training.models import SDN, ModelConfig  # noqa: E402

BAR = 0.20


def bench(rows: int, backbone: str, clip_len: int, size_px: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    cfg = FieldMeasuresConfig(split="val", gates=GateConfig(scuba_min_coverage=0.0, swap_min_coverage=0.0),
                              batch_size=rows)
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_pattern_shards(tmp, {"val": rows}, num_frames=clip_len, size_px=size_px)
        plan = plan_rows(shards, cfg)
    model = SDN(ModelConfig(backbone=backbone), num_actions=4, num_scenes=4).eval()
    build = make_build_fn(clip_len, size_px, cfg)
    warm = build(plan.slice(0, 1))
    predict_built(model, warm["clips"], warm["built"])
    t = time.perf_counter()
    built = build(plan)
    build_s = time.perf_counter() - t
    clips = int(built["built"].sum())
    assert clips == rows * len(clip_kinds(cfg.backgrounds)), "a gate dropped clips: the two sides would differ"
    t = time.perf_counter()
    predict_built(model, built["clips"], built["built"])
    forward_s = time.perf_counter() - t
    return {"rows": rows, "clips": clips, "kinds": clip_kinds(cfg.backgrounds), "backbone": backbone,
            "clip_len": clip_len, "size_px": size_px, "torch_threads": threads, "build_s": round(build_s, 3),
            "forward_s": round(forward_s, 3), "ratio": round(build_s / forward_s, 4), "bar": BAR,
            "meets_bar": build_s / forward_s <= BAR, "machine": platform.processor() or platform.machine()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16, help="curated rows (each becomes 6 clips)")
    parser.add_argument("--backbone", default="r3d_18", help="the model whose forward pass is the yardstick")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--quick", action="store_true", help="r3d_narrow, 8 frames of 32 px, 4 rows")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        result = bench(4, "r3d_narrow", 8, 32, args.threads)
    else:
        result = bench(args.rows, args.backbone, 16, 112, args.threads)
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
