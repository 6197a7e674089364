"""Embed-stage benchmark: the `debias embed` pipeline (Ray Data: Parquet read -> clip rendering tasks ->
`Embedder` actor) against the same work in a plain loop in this process, same shards, same model.

    python benchmarks/bench_embed.py [--rows N] [--device cpu|cuda] [--backbone r3d_narrow|r3d_18] [--out FILE]

The loop reads the shard rows with pyarrow and, per batch, calls the stage's own two functions
(`make_eval_clip_fn`, `Embedder`): what the Ray stage does, without Ray. The stage is `embed_dataset`
(as `run_embed` builds it) consumed to the end. Each runs on N rows and on 4N rows (after a discarded
warm-up run: the session's first Ray run also starts its worker processes), and both rates are marginal
rates: the 3N more rows over the extra time they took, so that what a run pays once (loading the model,
starting the actors, the first forward pass) cancels out. (The stage's rows reach the consumer in a
burst at the end on 2 cores, so a rate timed within one run cannot leave its start out.) `ratio` =
stage rate / loop rate, the issue's ">= 0.85". `wall_ratio` compares the N-row runs whole (actor start
included, Ray's own start not).
The last line printed is a JSON object with every figure (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from debias.training.clips import ClipConfig, write_pattern_shards  # noqa: E402
from debias.config import to_dict  # noqa: E402
from debias.curation.curate import DecodeConfig  # noqa: E402
from debias.evaluation.embed import EmbedConfig, Embedder, embed_dataset, make_eval_clip_fn  # noqa: E402
from debias.training.models import SDN, ModelConfig  # noqa: E402
from debias.training.runs import RunWriter, checkpoint_name, read_run, write_run_config  # noqa: E402
from debias.curation.shards import shard_files  # noqa: E402
from debias.training.train import PretrainConfig  # noqa: E402


def make_run(run: Path, backbone: str, frames: int, size_px: int) -> PretrainConfig:
    """A run folder holding a freshly initialised SDN (the benchmark times inference, not accuracy)."""
    cfg = PretrainConfig(model=ModelConfig(backbone=backbone), clip=ClipConfig(clip_len=frames, crop_px=size_px),
                         shards="(benchmark)")
    model = SDN(cfg.model, num_actions=4, num_scenes=4)
    write_run_config(str(run), cfg, [f"class_{k}" for k in range(4)], [f"scene_{k}" for k in range(4)], 4,
                     {"config": {"decode": to_dict(DecodeConfig(num_frames=frames, short_side_px=size_px,
                                                                crop_px=size_px))}}, "0" * 64)
    (run / checkpoint_name(0)).mkdir(parents=True)
    torch.save({"model": model.state_dict(), "epoch": 0}, run / checkpoint_name(0) / "state.pt")
    RunWriter(str(run), tensorboard=False).epoch({"epoch": 0, "checkpoint": checkpoint_name(0)}, {})
    return cfg


def timed(marks: list[tuple[float, int]], t0: float) -> dict:
    """(time, rows so far) at each batch out -> the run's wall seconds and rows."""
    return {"wall_s": marks[-1][0] - t0, "rows": marks[-1][1]}


def marginal_rate(small: dict, large: dict) -> float:
    """Rows per second of the rows the large run has beyond the small one."""
    return (large["rows"] - small["rows"]) / (large["wall_s"] - small["wall_s"])


def plain_loop(cfg: EmbedConfig, clip: ClipConfig, files: list[str], device: str, threads: int) -> dict:
    """The stage's work without Ray, from the model's load on (`timed`'s figures)."""
    t0 = time.perf_counter()
    embedder = Embedder(cfg.run, cfg.checkpoint, device, threads)
    render = make_eval_clip_fn(clip)
    columns = ["video_id", "clip_index", "label", "split", "source_path", "frames", "height", "width"]
    marks, rows = [], 0
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=cfg.batch_size, columns=columns):
            embedder(render({c: batch.column(c).to_numpy(zero_copy_only=False) for c in columns}))
            rows += batch.num_rows
            marks.append((time.perf_counter(), rows))
    return timed(marks, t0)


def ray_stage(cfg: EmbedConfig) -> dict:
    """The Ray pipeline of `run_embed`, consumed to the end (`timed`'s figures)."""
    t0 = time.perf_counter()
    ds, _, _ = embed_dataset(cfg, read_run(cfg.run))
    marks, rows = [], 0
    for b in ds.iter_batches(batch_size=cfg.batch_size, batch_format="pyarrow"):
        rows += b.num_rows
        marks.append((time.perf_counter(), rows))
    return timed(marks, t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=640, help="rows of the small timed run (the large: 4x)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size-px", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--backbone", default="r3d_narrow")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the loop and of the actor (CPU)")
    parser.add_argument("--out", default="out/bench_embed.json")
    args = parser.parse_args()

    import ray

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        pretrain = make_run(Path(d) / "run", args.backbone, args.frames, args.size_px)
        gpus = 1.0 if args.device == "cuda" else 0.0
        configs = {}
        sizes = {"warmup": args.batch_size * 4, "small": args.rows, "large": 4 * args.rows}
        for name, n in sizes.items():
            shards = write_pattern_shards(Path(d) / f"shards_{name}", {"train": n}, num_frames=args.frames,
                                          size_px=args.size_px, rows_per_file=args.batch_size * 4)
            configs[name] = EmbedConfig(run=str(Path(d) / "run"), input=str(shards), out=str(Path(d) / "emb"),
                                        batch_size=args.batch_size, cpus_per_actor=float(args.threads), gpus_per_actor=gpus)
        torch.set_num_threads(args.threads)
        loop = {name: plain_loop(configs[name], pretrain.clip, shard_files(configs[name].input), args.device, args.threads)
                for name in sizes}
        t = time.perf_counter()
        # as the tests start it: no dashboard (the pipeline needs none; it is seconds of start on 2 cores)
        ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 1024**2)
        ray_start_s = time.perf_counter() - t
        ray.data.DataContext.get_current().enable_progress_bars = False
        stage = {name: ray_stage(configs[name]) for name in sizes}
        ray.shutdown()
    loop_rate, stage_rate = marginal_rate(loop["small"], loop["large"]), marginal_rate(stage["small"], stage["large"])
    figures = {
        "rows": args.rows, "frames": args.frames, "size_px": args.size_px, "batch_size": args.batch_size,
        "backbone": args.backbone, "device": args.device, "threads": args.threads,
        "rows_out": {name: r["rows"] for name, r in stage.items()},
        "loop_wall_s": {name: round(r["wall_s"], 3) for name, r in loop.items()},
        "stage_wall_s": {name: round(r["wall_s"], 3) for name, r in stage.items()},
        "ray_start_s": round(ray_start_s, 3),
        "loop_rows_per_s": round(loop_rate, 2), "stage_rows_per_s": round(stage_rate, 2),
        "ratio": round(stage_rate / loop_rate, 3), "wall_ratio": round(loop["small"]["wall_s"] / stage["small"]["wall_s"], 3),
        "machine": f"{platform.node()} {os.cpu_count()} CPUs",
        "load_1min": [round(load_start, 1), round(os.getloadavg()[0], 1)],  # at the start and at the end
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
