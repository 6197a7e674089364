"""Transfer: fine-tune pretrained backbones on target tasks (Ray Train runs in parallel) and measure
each pretrained model's scene bias.

    python -m ray_jobs.transfer --config configs/transfer/synth.yaml [key=value ...]

For every pretrained model (`pretrained: {name: checkpoint dir}`), target and split: a new head, all
layers fine-tuned, video-level top-1 on the split's test videos. For every pretrained model: the scene
probe, the representation bias and the counterfactual test on the pretraining data (debias/bias.py).
Writes OUT/summary.json, OUT/report.md, OUT/transfer.png (the table as bars) and OUT/curves.png.
"""

from __future__ import annotations

import logging
import time

import ray
from tqdm import tqdm

from debias import runs, storage
from debias.bias import BiasConfig, dataset_bias, load_bias_data, measure_bias
from debias.cluster import init_ray
from debias.config import from_dict, to_dict
from debias.pretrain import run_pretrain
from debias.report import plot_bars, plot_curves, table
from debias.shards import read_classes
from debias.sweep import concurrent_runs, run_task_cpus
from debias.train import PretrainConfig
from debias.transfer import SCRATCH, TransferConfig, run_specs, transfer_table
from ray_jobs.common import job_parser, load_job_config

log = logging.getLogger("ray_jobs.transfer")  # not __name__: under `python -m` that is __main__

BIAS_COLUMNS = ["pretrain", "scene_probe_acc", "scene_mdl_bits", "scene_mdl_compression", "masked_action_acc",
                "masked_action_prob", "representation_bias", "counterfactual_drop", "counterfactual_follows_background"]


@ray.remote
def finetune(config: dict) -> dict:
    """One fine-tuning run (a TorchTrainer launched from this task); its per-epoch history."""
    result = run_pretrain(from_dict(PretrainConfig, config))
    return {"history": result["history"], "final": result["final"]}


@ray.remote
def dataset_bias_of(shards: str, bias: dict) -> dict:
    """What the pretraining data itself says about scene bias (once per dataset, not per model)."""
    return dataset_bias(load_bias_data(shards, from_dict(BiasConfig, bias)), len(read_classes(shards)))


@ray.remote
def bias_of(checkpoint: str, shards: str, bias: dict) -> dict:
    """The scene-bias measurements of one pretrained model on its pretraining data."""
    model, info = runs.load_model(checkpoint)
    return measure_bias(model, shards, info.num_actions, info.num_scenes, from_dict(BiasConfig, bias))


def run_transfer(cfg: TransferConfig) -> dict:
    """All fine-tuning runs and bias measurements; returns the summary also written to OUT/summary.json."""
    t0 = time.perf_counter()
    out = storage.absolute(cfg.out)
    storage.check_storage(out, "out")
    specs = run_specs(cfg)
    if not specs:
        raise SystemExit("transfer: nothing to run (set pretrained: {name: checkpoint} and targets: {...})")
    init_ray()
    parallel = cfg.max_parallel or concurrent_runs(cfg.finetune, cfg.run_cpus, ray.cluster_resources())
    log.info("transfer: %d fine-tuning runs (%d at a time), bias measurements of %s -> %s", len(specs), parallel,
             sorted(k for k in cfg.pretrained if k != SCRATCH), out)

    # Bias measurements, 1 task per pretrained model: in-process torch on `bias_cpus` cores, started
    # first so they overlap the fine-tuning (they need no Train workers).
    bias_refs = {name: bias_of.options(num_cpus=cfg.bias_cpus).remote(
        storage.absolute(ckpt), storage.absolute(cfg.source_shards), to_dict(cfg.bias))
        for name, ckpt in cfg.pretrained.items() if name != SCRATCH}
    data_bias_ref = dataset_bias_of.options(num_cpus=cfg.bias_cpus).remote(storage.absolute(cfg.source_shards),
                                                                           to_dict(cfg.bias))
    # Fine-tuning, 1 task per (pretrained, target, split): each task only drives its own TorchTrainer
    # (a fraction of a CPU); at most `parallel` in flight so that the Train workers and the Data tasks
    # feeding them always find CPUs (or GPUs).
    pending = list(specs)
    running: dict = {}
    rows, histories = [], {}
    with tqdm(total=len(specs), desc="transfer runs", unit="run", disable=None) as bar:
        while pending or running:
            while pending and len(running) < parallel:
                spec = pending.pop(0)
                running[finetune.options(num_cpus=run_task_cpus(cfg.finetune, cfg.run_cpus)).remote(to_dict(spec.config))] = spec
            done, _ = ray.wait(list(running), num_returns=1)
            spec = running.pop(done[0])
            result = ray.get(done[0])
            test_split = spec.config.eval_splits[0]
            rows.append({"pretrain": spec.pretrain, "target": spec.target, "split": spec.split,
                         "train_split": spec.config.train_split, "test_split": test_split,
                         # video level: the mean softmax over finetune.clip.eval_clips clips of each video
                         "top1": result["final"].get(f"{test_split}_video_acc",
                                                     result["final"].get(f"{test_split}_acc")),
                         "epochs": len(result["history"])})
            histories[spec.config.name] = result["history"]
            bar.update(1)
            log.info("transfer: %s done (%d/%d), top-1 %s", spec.config.name, len(rows), len(specs), rows[-1]["top1"])
    order = {(s.pretrain, s.target, s.split): i for i, s in enumerate(specs)}
    rows.sort(key=lambda r: order[(r["pretrain"], r["target"], r["split"])])
    bias = {name: ray.get(ref) for name, ref in tqdm(bias_refs.items(), desc="bias measurements", unit="model",
                                                     disable=None)}
    return write_report(cfg, out, rows, histories, bias, ray.get(data_bias_ref), time.perf_counter() - t0)


def write_report(cfg: TransferConfig, out: str, rows: list[dict], histories: dict, bias: dict, data_bias: dict,
                 wall_s: float) -> dict:
    targets = list(cfg.targets)
    summary_table = transfer_table(rows, targets)
    bias_rows = [{"pretrain": name, **{k: v for k, v in b.items() if k != "videos"}} for name, b in bias.items()]
    summary = {"transfer": rows, "table": summary_table, "bias": bias, "dataset_bias": data_bias, "wall_s": round(wall_s, 1),
               "config": to_dict(cfg)}
    storage.write_json(storage.join(out, "summary.json"), summary)
    plot_bars(summary_table, "pretrain", targets, storage.join(out, "transfer.png"), ylabel="top-1 (mean over splits)")
    test_metrics = sorted({f"{r['test_split']}_acc" for r in rows})
    plot_curves(histories, ["train_acc", *test_metrics], storage.join(out, "curves.png"))
    report = "\n".join([
        "# Transfer and scene bias", "",
        (f"Top-1 (video level: mean softmax over {cfg.finetune.clip.eval_clips} clip(s) per video) after fine-tuning "
         "all layers with a new head; mean over each target's splits:"), "",
        table(summary_table, ["pretrain", *targets]), "",
        "![transfer](transfer.png)", "",
        "Per split:", "", table(rows, ["pretrain", "target", "split", "top1", "epochs"]), "",
        ("Scene bias of each pretrained model on its pretraining data: `scene_probe_acc`, a linear probe on "
         f"frozen features predicting the pseudo scene label on `{cfg.bias.scene_split}`, and `scene_mdl_bits`, "
         "the online codelength of those labels given the features (fewer bits = more scene information; "
         "`compression` = uniform code / online code); `masked_action_acc` / `masked_action_prob`: the model's own "
         f"action accuracy and true-class probability on `{cfg.bias.test_split}` clips with the people removed "
         "(chance = none from the background); `representation_bias` = log(scene-only probe accuracy / chance); "
         f"`counterfactual_*`: the model on `{cfg.bias.test_split}` clips whose people were pasted onto another "
         "action's background (`follows_background`: share predicted as the background's action)."), "",
        (f"The data itself (once, not per model): the true scene label alone gives the action at "
         f"{data_bias['scene_label_action_acc']:.3f} (chance {data_bias['action_chance']:.3f}), "
         f"log ratio {data_bias['scene_label_bias']:.3f}: the ceiling of any model's `representation_bias`."), "",
        table(bias_rows, BIAS_COLUMNS) if bias_rows else "(no pretrained checkpoints to measure)", "",
        "![fine-tuning curves](curves.png)", "",
    ])
    storage.write_text(storage.join(out, "report.md"), report)
    log.info("transfer top-1:\n%s", table(summary_table, ["pretrain", *targets]))
    if bias_rows:
        log.info("scene bias:\n%s", table(bias_rows, BIAS_COLUMNS))
    log.info("transfer: %d runs in %.0f s; summary: %s  report: %s", len(rows), wall_s,
             storage.join(out, "summary.json"), storage.join(out, "report.md"))
    return summary


def main(argv: list[str] | None = None) -> None:
    args = job_parser("debias transfer", __doc__).parse_args(argv)
    run_transfer(load_job_config(TransferConfig, args))


if __name__ == "__main__":
    main()
