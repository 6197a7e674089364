"""Pretrain: the SDN trainer on Ray Train, reading the curated shards through Ray Data.

    python -m ray_jobs.pretrain --config configs/pretrain/sdn.yaml [key=value ...]

loss.lambda_scene=0 loss.lambda_mask=0 is the baseline. Running the same OUT/NAME again resumes
from its last checkpoint; scaling.max_failures=N restarts the workers from it when one dies.
configs/repro/ holds the paper's Mini-Kinetics-200 recipes and the seed study's. Metrics per epoch
go to OUT/NAME/metrics.jsonl and TensorBoard events to OUT/NAME/tensorboard.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import ray
from ray.data.expressions import col
from ray.train import CheckpointConfig, FailureConfig, RunConfig
from ray.train import ScalingConfig as RayScaling
from ray.train.torch import TorchTrainer

from debias.clips import CLIP_COLUMNS, make_clip_fn, make_clip_plan_fn
from debias.config import to_dict
from debias.curate import shard_files
from debias.models import SDN
from debias.train import PretrainConfig, decode_on_device, read_metrics, train_loop_per_worker
from ray_jobs.common import init_ray, job_parser, load_job_config


def split_rows(cfg: PretrainConfig) -> dict[str, ray.data.Dataset]:
    """The shard rows of each split the run reads (train and eval), only the columns a clip needs."""
    files = [str(f) for f in shard_files(Path(cfg.shards) / "shards")]
    splits = list(dict.fromkeys([cfg.train_split, *cfg.eval_splits]))
    rows = ray.data.read_parquet(files).select_columns(CLIP_COLUMNS + ["split"])
    if not cfg.loader.cache_rows:  # each split's filter is pushed into its own Parquet scan, every epoch
        return {s: rows.filter(expr=col("split") == s) for s in splits}
    # small data: one scan for all splits (a scan costs seconds of task start-up even when tiny), then
    # every epoch streams each split from the object store
    cached = rows.filter(expr=col("split").is_in(splits)).materialize()
    return {s: cached.filter(expr=col("split") == s).materialize() for s in splits}


def clip_dataset(cfg: PretrainConfig, rows: ray.data.Dataset, train: bool) -> ray.data.Dataset:
    with_masked = cfg.loss.lambda_mask > 0 or not train  # eval always measures the masked-clip entropy
    # fresh random windows, crops and flips every epoch: 1:1 per row when training, 1:clip.eval_clips
    # when evaluating (video-level scores). decode_on=tasks also decodes and renders the clips here
    # (OpenCV); decode_on=device keeps them JPEG for the worker's GPU (ClipCollate in the trainer).
    # A fraction of a CPU per task, so that it overlaps the training step instead of waiting for a core.
    make_fn = make_clip_plan_fn if decode_on_device(cfg) else make_clip_fn
    return rows.map_batches(make_fn(cfg.clip, train, with_masked, cfg.seed), batch_format="numpy",
                            batch_size=cfg.optim.batch_size, num_cpus=cfg.loader.clip_cpus)


def run_pretrain(cfg: PretrainConfig, callbacks: list | None = None) -> dict:
    """Fit one model; returns {"name", "history": per-epoch metrics, "final", "checkpoint"}.

    `callbacks`: Ray Train callbacks (the sweep passes Tune's TuneReportCallback).
    """
    shards_dir = Path(cfg.shards)
    files = shard_files(shards_dir / "shards")
    if not files:
        raise FileNotFoundError(f"no shards in {shards_dir / 'shards'} (shards=...): run `debias preprocess` first")
    classes = json.loads((shards_dir / "classes.json").read_text())
    num_scenes = len(pq.read_table(files[0], columns=["scene_probs"]).column("scene_probs")[0])
    if num_scenes == 0:
        raise ValueError(f"{shards_dir} has no scene labels (preprocessed with labels.scene_provider=none); "
                         "the scene head needs them: preprocess with a scene provider")
    if cfg.model.init_from:  # a wrong weights file fails here, before Ray starts, naming model.init_from
        SDN(cfg.model, len(classes), num_scenes)
    init_ray()
    ctx = ray.data.DataContext.get_current()
    # The trainer prints one line per epoch; per-operator bars from three datasets would drown it.
    ctx.enable_progress_bars = False
    # Same blocks in the same order every epoch and every run: with the seeded shuffle, a rerun
    # of a config reproduces its numbers (streaming order otherwise depends on task timing).
    ctx.execution_options.preserve_order = True
    # 1. read the splits' rows (once, when cached); 2. clips from them, 1:1 (train) or 1:eval_clips (eval)
    rows = split_rows(cfg)
    datasets = {cfg.train_split: clip_dataset(cfg, rows[cfg.train_split], train=True)}
    datasets.update({s: clip_dataset(cfg, rows[s], train=False) for s in cfg.eval_splits})
    sc = cfg.scaling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "num_actions": len(classes), "num_scenes": num_scenes},
        scaling_config=RayScaling(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                  resources_per_worker={"CPU": sc.cpus_per_worker}),
        run_config=RunConfig(name=cfg.name, storage_path=str(Path(cfg.out).resolve()),
                             failure_config=FailureConfig(max_failures=sc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks),
        datasets=datasets,
    )
    result = trainer.fit()
    run_dir = Path(cfg.out).resolve() / cfg.name
    history = read_metrics(run_dir)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    final = history[-1] if history else {}
    shown = ", ".join(f"{s}_{m}={final[f'{s}_{m}']:.3f}" for s in cfg.eval_splits
                      for m in ("acc", "video_acc", "top5") if f"{s}_{m}" in final)
    print(f"pretrain [{cfg.name}]: {len(history)} epochs, {shown} -> {run_dir}")
    return {"name": cfg.name, "history": history, "final": final,
            "checkpoint": result.checkpoint.path if result.checkpoint else None}


def main(argv: list[str] | None = None) -> None:
    args = job_parser("debias pretrain", __doc__).parse_args(argv)
    run_pretrain(load_job_config(PretrainConfig, args))


if __name__ == "__main__":
    main()
