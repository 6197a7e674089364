"""The pretraining driver: curated shards -> Ray Data clip datasets -> a Ray Train `TorchTrainer` fit.

`run_pretrain` is what `debias pretrain`, every sweep trial (Tune wraps it unchanged), every transfer
fine-tuning run and the demo call; the per-worker loop it hands to Ray Train is
`debias.train.train_loop_per_worker`. The run folder (config.json first, then checkpoints and
metrics) is laid out by `debias.runs`; the shards are read through `debias.shards`. Both may live on
any storage (`out=s3://...`): Ray Train gets the same URI as its storage path.
"""

from __future__ import annotations

import logging
import math

import ray
from ray.data.expressions import col
from ray.train import CheckpointConfig, FailureConfig, RunConfig
from ray.train import ScalingConfig as RayScaling
from ray.train.torch import TorchTrainer

from debias import runs, storage
from debias.clips import CLIP_COLUMNS, make_clip_fn, make_clip_plan_fn
from debias.cluster import init_ray
from debias.config import to_dict
from debias.shards import num_scenes, read_classes, read_scene_names, read_summary, shard_files, summary_digest
from debias.train import PretrainConfig, decode_on_device, train_loop_per_worker

log = logging.getLogger(__name__)


def split_rows(cfg: PretrainConfig, files: list[str]) -> dict[str, ray.data.Dataset]:
    """The shard rows of each split the run reads (train and eval), only the columns a clip needs."""
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


def check_labelled(rows: ray.data.Dataset, split: str) -> int:
    """The split's row count; unlabelled rows (label_id -1, e.g. a Kinetics test list) cannot be trained on."""
    unlabelled = rows.filter(expr=col("label_id") < 0).count()
    if unlabelled:
        raise ValueError(f"train_split={split!r} holds {unlabelled} unlabelled rows (label_id -1): training "
                         "needs labels; curate a labelled list, or choose another train_split")
    return rows.count()


def run_pretrain(cfg: PretrainConfig, callbacks: list | None = None) -> dict:
    """Fit one model; returns {"name", "run", "history": per-epoch metrics, "final", "checkpoint",
    "best_checkpoint"}.

    `callbacks`: Ray Train callbacks (the sweep passes Tune's TuneReportCallback).
    """
    shards, out = storage.absolute(cfg.shards), storage.absolute(cfg.out)
    storage.check_storage(shards, "shards", write=False)
    storage.check_storage(out, "out")
    files = shard_files(shards)  # FileNotFoundError naming the folder when nothing is committed there
    classes = read_classes(shards)
    scenes = num_scenes(shards)
    if scenes == 0:
        raise ValueError(f"{shards} has no scene labels (preprocessed with labels.scene_provider=none); "
                         "the scene head needs them: preprocess with a scene provider")
    if cfg.model.init_from:  # a wrong weights file fails here, before Ray starts, naming model.init_from
        runs.build_model(cfg.model, len(classes), scenes)
    run = runs.run_path(out, cfg.name)
    runs.write_run_config(run, cfg, classes, read_scene_names(shards), scenes, read_summary(shards),
                          summary_digest(shards))
    init_ray()
    ctx = ray.data.DataContext.get_current()
    # The trainer logs one line per epoch; per-operator bars from three datasets would drown it.
    ctx.enable_progress_bars = False
    # Same blocks in the same order every epoch and every run: with the seeded shuffle, a rerun
    # of a config reproduces its numbers (streaming order otherwise depends on task timing).
    ctx.execution_options.preserve_order = True
    # 1. read the splits' rows (once, when cached); 2. clips from them, 1:1 (train) or 1:eval_clips (eval)
    rows = split_rows(cfg, files)
    sc = cfg.scaling
    counts = {cfg.train_split: check_labelled(rows[cfg.train_split], cfg.train_split)}
    counts.update({s: rows[s].count() * cfg.clip.eval_clips for s in cfg.eval_splits})
    steps = {s: math.ceil(n / sc.num_workers / cfg.optim.batch_size) for s, n in counts.items()}
    datasets = {cfg.train_split: clip_dataset(cfg, rows[cfg.train_split], train=True)}
    datasets.update({s: clip_dataset(cfg, rows[s], train=False) for s in cfg.eval_splits})
    metric = runs.best_metric(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "num_actions": len(classes), "num_scenes": scenes, "run": run,
                           "steps": steps},
        scaling_config=RayScaling(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                  resources_per_worker={"CPU": sc.cpus_per_worker}),
        run_config=RunConfig(name=cfg.name, storage_path=out,
                             failure_config=FailureConfig(max_failures=sc.max_failures),
                             checkpoint_config=CheckpointConfig(
                                 num_to_keep=cfg.checkpoint_keep, checkpoint_score_attribute=metric,
                                 checkpoint_score_order="max" if runs.higher_is_better(metric) else "min"),
                             callbacks=callbacks),
        datasets=datasets,
    )
    trainer.fit()
    history = runs.read_metrics(run)
    final = history[-1] if history else {}
    shown = ", ".join(f"{s}_{m}={final[f'{s}_{m}']:.3f}" for s in cfg.eval_splits
                      for m in ("acc", "video_acc", "top5") if f"{s}_{m}" in final)
    log.info("pretrain [%s]: %d epochs, %s -> %s", cfg.name, len(history), shown, run)
    return {"name": cfg.name, "run": run, "history": history, "final": final,
            "checkpoint": runs.checkpoint_path(run), "best_checkpoint": runs.checkpoint_path(run, "best")}
