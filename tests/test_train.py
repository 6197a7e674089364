"""The trainer: DDP equivalence, both update schemes, LR schedules, local mode, failed and stopped jobs.
(Resuming a stopped run: test_s3.py; a lost worker node: test_multinode.py.)

The data are moving-square shards written straight in the shard schema (`write_pattern_shards`).
"""

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from debias import storage
from debias.training import runs
from debias.training.clips import CLIP_COLUMNS, ClipConfig, make_clip_fn, write_pattern_shards
from debias.config import ConfigError, load_config
from debias.training.models import SDN, ModelConfig
from debias.curation.shards import read_parquet, shard_files
from debias.training.train import (
    LossConfig,
    LRSchedule,
    OptimConfig,
    PretrainConfig,
    evaluate,
    make_optimizer,
    train_one_epoch,
)

FRAMES, SIZE = 8, 32


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: one thread is as fast, and on a busy machine OpenMP threads that wait for each
    other turn a 20 ms step into seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return Path(write_pattern_shards(tmp_path_factory.mktemp("pattern"), {"train": 96, "val": 16},
                                num_frames=FRAMES, size_px=SIZE, rows_per_file=16))


def _batches(shards: Path, split: str, batch_size: int, clip_cfg: ClipConfig | None = None) -> list[dict]:
    """Deterministic (evaluation-mode) clips of one split as torch batches, masked twins included."""
    table = pa.concat_tables([read_parquet(f, CLIP_COLUMNS + ["split"]) for f in shard_files(str(shards))]).to_pandas()
    table = table[table["split"] == split]
    fn = make_clip_fn(clip_cfg or ClipConfig(clip_len=FRAMES, crop_px=SIZE), train=False, with_masked=True)
    out = fn({k: table[k].to_numpy() for k in CLIP_COLUMNS})
    n = len(out["label_id"])
    return [{k: torch.from_numpy(v[i:i + batch_size]) for k, v in out.items()} for i in range(0, n, batch_size)]


def _model(**overrides) -> SDN:
    torch.manual_seed(0)
    return SDN(ModelConfig(**{"width": 4, **overrides}), num_actions=4, num_scenes=4)


# -- DDP: 2 gloo workers on halves of the global batch == 1 worker on the global batch ------------------

def _ddp_worker(rank: int, port: int, batches: list[dict], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = torch.nn.parallel.DistributedDataParallel(_model(freeze_bn=True, scene_layers=0))
    optimizer = make_optimizer(model.module, OptimConfig(lr=0.1))
    halves = [{k: v[rank * len(v) // 2:(rank + 1) * len(v) // 2] for k, v in b.items()} for b in batches]
    metrics = train_one_epoch(model, halves, optimizer, LossConfig(), torch.device("cpu"))
    if rank == 0:
        torch.save({"model": model.module.state_dict(), "metrics": metrics}, out)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_with_two_gloo_workers_matches_one_worker_on_the_same_global_batch(shards, tmp_path):
    # Frozen backbone BatchNorm (model.freeze_bn) and no BatchNorm in the scene head: with batch
    # statistics, two half batches are normalised differently from one whole batch, DDP or not.
    batches = _batches(shards, "train", 8)[:2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    torch.multiprocessing.spawn(_ddp_worker, args=(port, batches, str(out)), nprocs=2)
    ddp = torch.load(out, weights_only=True)

    model = _model(freeze_bn=True, scene_layers=0)
    metrics = train_one_epoch(model, batches, make_optimizer(model, OptimConfig(lr=0.1)), LossConfig(),
                              torch.device("cpu"))
    start = _model(freeze_bn=True, scene_layers=0).state_dict()
    for key, value in model.state_dict().items():
        assert torch.allclose(ddp["model"][key], value, atol=1e-5), key
    assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())  # it did train
    assert ddp["metrics"].keys() == metrics.keys()
    for key, value in metrics.items():
        assert ddp["metrics"][key] == pytest.approx(value, abs=1e-5), key


# -- the update schemes, the heads' warm-up, schedules ----------------------------------------------

@pytest.mark.parametrize("update,mask_head", [("joint", "shared"), ("alternating", "shared"),
                                              ("joint", "separate")])
def test_update_schemes_train_the_action_and_confuse_the_masked_clips(shards, update, mask_head):
    batches = _batches(shards, "train", 8)[:6]
    model = _model(mask_head=mask_head)
    mask_head_before = [p.clone() for p in (model.mask_head or model.action_head).parameters()]
    optimizer = make_optimizer(model, OptimConfig(lr=0.05))
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    loss_cfg = LossConfig(update=update, lambda_scene=0.2, lambda_mask=1.0)
    history = [train_one_epoch(model, batches, optimizer, loss_cfg, torch.device("cpu"))
               for _ in range(6)]
    # One optimizer step per batch when joint, two (clean, then masked) when alternating.
    assert len(steps) == 6 * len(batches) * (2 if update == "alternating" else 1)
    assert history[-1]["action_loss"] < history[0]["action_loss"]
    assert history[-1]["acc"] > 0.25 + 0.1  # above the 1/4 chance
    if mask_head == "shared":  # without the people, the action head grows unsure (at most log 4 = 1.386)
        assert history[-1]["masked_entropy"] > 1.0
    # The head the mask loss reads has been trained (the separate one only by the mask loss).
    assert any(not torch.equal(a, b) for a, b in zip(mask_head_before, (model.mask_head or model.action_head).parameters()))
    result = evaluate(model, _batches(shards, "val", 8), torch.device("cpu"))
    assert {"loss", "acc", "top5", "video_acc", "video_top5", "scene_acc", "masked_entropy"} <= result.keys()
    assert result["top5"] == 1.0  # 4 classes: the top 5 always hold the label


def test_head_warmup_holds_the_backbone_still(shards):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(model, OptimConfig(lr=0.05))
    train_one_epoch(model, _batches(shards, "train", 8)[:2], optimizer, LossConfig(), torch.device("cpu"),
                    train_backbone=False)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == name.startswith("backbone."), name


def test_video_level_eval_averages_a_videos_clips(shards):
    batches = _batches(shards, "val", 64, ClipConfig(clip_len=4, crop_px=SIZE, eval_clips=3))
    assert len(batches[0]["label_id"]) == 3 * 16 and len(set(batches[0]["video_key"].tolist())) == 16
    result = evaluate(_model(), batches, torch.device("cpu"))
    assert 0.0 <= result["video_acc"] <= 1.0 and 0.0 <= result["acc"] <= 1.0


def test_lr_schedules_warmup_and_plateau_state():
    cfg = OptimConfig(lr=0.1, epochs=10, schedule="step", lr_milestones_epochs=[6, 8], head_warmup_epochs=2,
                      head_warmup_lr=0.01)
    s = LRSchedule(cfg)
    assert [s.lrs(e) for e in (0, 1, 2, 6, 9)] == [(0.0, 0.01), (0.0, 0.01), (0.1, 0.1),
                                                   pytest.approx((0.01, 0.01)), pytest.approx((0.001, 0.001))]
    cosine = LRSchedule(OptimConfig(lr=0.1, epochs=4))
    assert [round(cosine.lrs(e)[0], 4) for e in range(4)] == [0.1, 0.0854, 0.05, 0.0146]
    plateau = LRSchedule(OptimConfig(lr=0.1, schedule="plateau", plateau_patience_epochs=1, lr_gamma=0.5))
    for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.96, 0.97]):
        plateau.observe(epoch, {"train_loss": loss})
    assert plateau.lrs(5)[0] == pytest.approx(0.05)  # two epochs without improvement > patience 1
    resumed = LRSchedule(plateau.cfg)
    resumed.load_state_dict(plateau.state_dict())
    assert resumed.lrs(5) == plateau.lrs(5)
    with pytest.raises(KeyError, match="plateau_metric"):
        plateau.observe(6, {"val_acc": 0.5})
    with pytest.raises(ConfigError, match="lr_milestones_epochs"):
        load_config(PretrainConfig, None, ["optim.schedule=step"])
    dann = LossConfig(grl_alpha=0.5, grl_schedule="dann")
    assert dann.grl_alpha_at(0, 10) == 0.0 and 0.49 < dann.grl_alpha_at(9, 10) < 0.5


def test_run_writer_events_parse_with_tensorboards_own_reader(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = runs.RunWriter(str(tmp_path), tensorboard=True)
    writer.epoch({"epoch": 3, "train_loss": 1.5, "name": "x", "checkpoint": "checkpoint_epoch_0003"}, {"val": [[1, 0], [0, 1]]})
    writer.epoch({"epoch": 4, "train_loss": 0.5}, {})
    writer.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [(3, 1.5), (4, 0.5)]
    assert "name" not in events.Tags()["scalars"]
    assert [m["epoch"] for m in runs.read_metrics(str(tmp_path))] == [3, 4]
    assert runs.read_confusion(str(tmp_path)) == {"val": [[1, 0], [0, 1]]}


def test_init_from_loads_the_backbone_only_and_names_the_key(tmp_path):
    source = _model()
    torch.save({"model": source.state_dict(), "epoch": 0}, tmp_path / "state.pt")
    target = runs.build_model(ModelConfig(width=4, init_from=str(tmp_path)), num_actions=7, num_scenes=2)
    assert all(torch.equal(v, source.backbone.state_dict()[k]) for k, v in target.backbone.state_dict().items())
    assert target(torch.zeros(2, 4, 16, 16, 3, dtype=torch.uint8)).action.shape == (2, 7)
    assert target.features(torch.zeros(2, 4, 16, 16, 3, dtype=torch.uint8)).shape == (2, 32)
    run = tmp_path / "run"  # a run folder: its latest checkpoint
    for epoch, model in ((0, _model(width=8)), (1, source)):
        (run / runs.checkpoint_name(epoch)).mkdir(parents=True)
        torch.save({"model": model.state_dict()}, run / runs.checkpoint_name(epoch) / "state.pt")
    from_run = runs.build_model(ModelConfig(width=4, init_from=str(run)), num_actions=3, num_scenes=2)
    assert torch.equal(from_run.backbone[0][0].weight, source.backbone[0][0].weight)
    with pytest.raises(ConfigError, match=r"model\.init_from: .*shape"):
        runs.build_model(ModelConfig(width=8, init_from=str(tmp_path)), 7, 2)
    with pytest.raises(ConfigError, match=r"model\.init_from: .*missing\.pt.*no such file"):
        runs.build_model(ModelConfig(init_from=str(tmp_path / "missing.pt")), 7, 2)


# -- Ray Train: stopping a run (its resume: test_s3.py; a lost worker node: test_multinode.py) ---------

def _train_workers() -> list[int]:
    """Pids of this test process's Ray Train workers (Ray's processes descend from the driver)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    mine, me = [], os.getpid()
    for pid in parents:
        p = pid
        while p in parents and p not in (0, 1, me):
            p = parents[p]
        try:  # a process listed above may have ended since
            if p == me and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                mine.append(pid)
        except OSError:
            continue
    return mine


def _kill_after_first_checkpoint(run: Path | str, thread: threading.Thread) -> tuple[int, set[int]]:
    """Wait until the controller registered a checkpoint of the run (a local folder or a URI), then
    SIGKILL one Train worker; returns the first registered epoch and the worker pids at that time.
    (Every epoch up to it has its metrics line on disk by then: the loop writes it before reporting.)"""
    snapshot = storage.join(str(run), "checkpoint_manager_snapshot.json")
    deadline = time.time() + 120
    while time.time() < deadline and thread.is_alive():
        if storage.is_file(snapshot) and "checkpoint_dir_name" in storage.read_text(snapshot):
            break
        time.sleep(0.05)
    registered = min(r["metrics"]["epoch"] for r in storage.read_json(snapshot)["checkpoint_results"])
    workers = _train_workers()
    assert workers, "no Ray Train worker process found"
    os.kill(workers[0], signal.SIGKILL)
    return registered, set(workers)


def _cfg(shards: Path, out: Path, name: str, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [
        f"shards={shards}", f"out={out}", f"name={name}", "eval_splits=[val]", "optim.epochs=4",
        "optim.batch_size=16", "optim.lr=0.05", "model.width=4", f"clip.clip_len={FRAMES}", f"clip.crop_px={SIZE}",
        "scaling.cpus_per_worker=1", "loader.clip_cpus=0.25", *extra])


def _run_in_thread(cfg: PretrainConfig) -> tuple[threading.Thread, dict]:
    from debias.training.pretrain import run_pretrain

    result: dict = {}

    def target() -> None:
        try:
            result.update(run_pretrain(cfg))
        except Exception as e:  # noqa: BLE001 - the test inspects it
            result["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


@pytest.mark.parametrize("cache_rows", [True, False])
def test_each_split_reads_its_own_rows_cached_or_not(shards, tmp_path, ray_local, cache_rows):
    """cache_rows: one scan for every split, then a filter per split; without: a filtered scan per split."""
    from debias.training.pretrain import split_rows

    cfg = _cfg(shards, tmp_path, "rows", "train_split=val", "eval_splits=[train,val]", f"loader.cache_rows={cache_rows}")
    files = shard_files(str(shards))
    rows = split_rows(cfg, files)
    assert set(rows) == {"train", "val"}
    table = pa.concat_tables([read_parquet(f, ["video_id", "split"]) for f in files]).to_pandas()
    for split, ds in rows.items():
        got = sorted(r["video_id"] for r in ds.select_columns(["video_id"]).take_all())
        assert got == sorted(table.video_id[table.split == split]), split


@pytest.mark.slow
def test_local_mode_trains_the_same_model_and_keeps_the_checkpoints_ray_keeps(shards, tmp_path, ray_local):
    """scaling.num_workers=0 (Ray Train's local mode, the demo's): the loop runs in this process, the same
    numbers as one worker; Ray keeps no checkpoint there, so the run folder keeps what Ray's
    CheckpointConfig keeps with workers (the best by val_acc and the latest), and a rerun resumes from it.
    The local runs evaluate clips rendered once (loader.cache_eval_clips, the demo's): every epoch's
    val_acc equals the worker's, which renders them anew each epoch."""
    from debias.training.pretrain import run_pretrain

    extra = ("optim.epochs=3", "checkpoint_keep=1", "scaling.cpus_per_worker=1")
    group = run_pretrain(_cfg(shards, tmp_path, "group", *extra))
    local_mode = ("scaling.num_workers=0", "loader.cache_eval_clips=true")
    local = run_pretrain(_cfg(shards, tmp_path, "local", *extra, *local_mode))
    for a, b in zip(group["history"], local["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4) and a["val_acc"] == b["val_acc"]
    kept = {storage.name(c) for c in runs.checkpoints(local["run"])}
    assert kept == {storage.name(c) for c in runs.checkpoints(group["run"])}
    accs = {m["checkpoint"]: m["val_acc"] for m in local["history"]}
    assert kept == {max(accs), max(accs, key=lambda c: (accs[c], c))}  # the latest and a best (ties: later)
    assert runs.checkpoint_path(local["run"], "best") in runs.checkpoints(local["run"])
    again = run_pretrain(_cfg(shards, tmp_path, "local", *extra, *local_mode))
    assert again["history"] == local["history"]  # resumed after its last epoch: nothing trained again
    with pytest.raises(ConfigError, match="max_failures"):
        _cfg(shards, tmp_path, "x", "scaling.num_workers=0", "scaling.max_failures=1")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "repro").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_repro_configs_follow_the_papers_recipe(path):
    cfg = load_config(PretrainConfig, path)
    assert cfg.model.backbone == "r3d_18" and (cfg.clip.clip_len, cfg.clip.crop_px) == (16, 112)
    assert cfg.optim.batch_size * cfg.scaling.num_workers == 32  # the paper's (global) batch


@pytest.mark.slow
def test_a_failed_pretrain_job_says_why_and_leaves_no_process(shards, tmp_path):
    """The run fails inside its Train worker (the plateau schedule reads a metric no epoch reports): the
    job exits non-zero naming the key, and none of its processes (Ray's included) outlives it."""
    import subprocess
    import sys

    from conftest import JOB_MARKER, left_behind

    job = subprocess.run([sys.executable, "-m", "ray_jobs.pretrain", f"shards={shards}", f"out={tmp_path}",
                          "name=failing", "optim.schedule=plateau", "optim.plateau_metric=nope_loss", "optim.epochs=2",
                          "optim.batch_size=16", "model.width=4", f"clip.clip_len={FRAMES}", "scaling.cpus_per_worker=1",
                          "eval_splits=[val]"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, JOB_MARKER: "failed-pretrain"})
    assert job.returncode != 0 and "plateau_metric" in job.stderr, job.stderr[-3000:]
    assert runs.read_run(str(tmp_path / "failing")).classes  # config.json was written before training
    left = left_behind("failed-pretrain")
    assert not left, f"processes of the failed job outlived it: {left}"


@pytest.mark.slow
def test_a_pretrain_job_stopped_with_sigterm_leaves_no_process(shards, tmp_path):
    """SIGTERM (kill, `timeout`, a scheduler) once the job's Ray is up: Python's default would exit without
    atexit and leave the private Ray running (seen: 29 processes of a demo); the job exits through it."""
    import subprocess
    import sys

    from conftest import JOB_MARKER, job_processes, left_behind

    job = subprocess.Popen([sys.executable, "-m", "ray_jobs.pretrain", f"shards={shards}", f"out={tmp_path}",
                            "name=stopped", "optim.epochs=50", "optim.batch_size=16", "model.width=4",
                            f"clip.clip_len={FRAMES}", "scaling.cpus_per_worker=1", "eval_splits=[val]"],
                           cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, JOB_MARKER: "sigterm-pretrain"})
    deadline = time.time() + 300
    while time.time() < deadline and not any("RayTrainWorker" in c for c in job_processes("sigterm-pretrain").values()):
        time.sleep(0.5)
    assert job.poll() is None, "the job ended before it could be stopped"
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) != 0
    left = left_behind("sigterm-pretrain")
    assert not left, f"processes of the stopped job outlived it: {left}"
