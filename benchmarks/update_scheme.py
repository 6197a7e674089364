"""The mask-loss update the trainer uses, chosen on `ood_val`: joint (one step on L_action + lambda_scene
L_scene + lambda_mask L_mask over the clean clips and their masked twins) against alternating (the official
code: a step on the action and scene losses over the clean clips, then a step on lambda_mask L_mask over
the masked twins), as the demo trains SDN: its benchmark, curation, recipe and loss weights (`DemoConfig`).

    python benchmarks/update_scheme.py [--work DIR] [--seeds 0 1 2 3 4 5] [--quick]

It renders and curates the demo's benchmark as the demo does, then trains SDN once per scheme and seed,
several runs at once as the demo runs them. The two runs of one seed share their initial weights, batch
order and evaluation clips, so the comparison is paired: per seed, ood_val_acc (alternating) - ood_val_acc
(joint) at the last epoch, with 95 % paired t and bootstrap intervals. The rule, fixed before the run: the
scheme of the higher mean ood_val_acc over the seeds is the default (as the weight sweep chooses its pair).
Nothing here reads ood_test. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from debias import storage  # noqa: E402
from debias.config import load_config  # noqa: E402
from debias.experiments.demo import DemoConfig, curate_benchmark, train_runs  # noqa: E402
from debias.experiments.stats import compare, mean_std  # noqa: E402

SCHEMES = ("joint", "alternating")
METRIC = "ood_val_acc"
# a smoke run of the code: a tiny benchmark, one epoch; its figures say nothing
QUICK = ["synth.train_per_class=4", "synth.val_per_class=1", "synth.ood_val_per_class=2", "synth.ood_test_per_class=1",
         "synth.target_train_per_class=0", "synth.target_test_per_class=0", "synth.frame_size_px=32", "synth.num_frames=8",
         "decode.num_frames=8", "pretrain.clip.clip_len=8", "pretrain.optim.epochs=1", "pretrain.model.width=4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="out/update_scheme", help="the benchmark, its shards and the runs (cleared first)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--quick", action="store_true", help="a smoke run of the code (tiny benchmark, 2 seeds, 1 epoch)")
    args = parser.parse_args()
    out = str(Path(args.work).resolve())
    storage.delete(out)
    cfg = load_config(DemoConfig, None, [f"out={out}", *(QUICK if args.quick else [])])
    seeds = [0, 1] if args.quick else args.seeds
    timings: dict[str, float] = {}
    _curated, shards = curate_benchmark(cfg, out, timings)
    configs = {(scheme, seed): dataclasses.replace(
        cfg.pretrain, shards=shards, out=storage.join(out, "runs"), name=f"{scheme}_seed{seed}", seed=seed,
        loss=dataclasses.replace(cfg.pretrain.loss, update=scheme)) for scheme in SCHEMES for seed in seeds}
    per_seed: dict[str, dict[int, float]] = {scheme: {} for scheme in SCHEMES}
    for (scheme, seed), result in train_runs(cfg, configs, f"SDN, {len(SCHEMES)} update schemes x seeds {seeds}"):
        per_seed[scheme][seed] = result["final"][METRIC]
    means = {scheme: dict(zip(("mean", "std"), mean_std(list(v.values())))) for scheme, v in per_seed.items()}
    chosen = max(SCHEMES, key=lambda s: means[s]["mean"])  # ties: joint, the first
    comparison = compare(per_seed["alternating"], per_seed["joint"], what="alternating - joint")
    loss = cfg.pretrain.loss
    print(json.dumps({
        "benchmark": "update_scheme", "metric": METRIC, "selected_on": "ood_val", "seeds": seeds, "quick": args.quick,
        "lambda_scene": loss.lambda_scene, "lambda_mask": loss.lambda_mask, "epochs": cfg.pretrain.optim.epochs,
        "per_seed": {s: [round(per_seed[s][k], 4) for k in seeds] for s in SCHEMES}, "means": means,
        # per seed, in the order of `seeds`
        "alternating_minus_joint": {**comparison, "differences": [round(comparison["differences"][k], 4) for k in seeds]},
        "chosen": chosen, "timings_s": timings}))


if __name__ == "__main__":
    main()
