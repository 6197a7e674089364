"""The loss-weight sweep: search spaces and trial sizing (no cluster), then a real Tune sweep of Ray
Train runs on a tiny synthetic benchmark: ASHA stops a weak trial, a crashed trial ends the sweep, the
same command resumes it alone, and the best trial is picked."""

import logging
import time
from pathlib import Path

import pytest
from ray import tune

from conftest import own_ray
from debias.config import ConfigError, load_config
from debias.curation.curate import PreprocessConfig
from debias.experiments.sweep import read_sweep, SweepConfig, best_trial, concurrent_runs, num_trials, param_space, weight_rows
from debias.curation.synth import SynthConfig
from debias.training.runs import read_metrics
from debias.cluster import init_ray
from debias.curation.preprocess import run_preprocess
from debias.experiments.sweep import run_sweep, trial_driver
from debias.curation.synth import run_synth

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAINING = ["pretrain.clip.clip_len=8", "pretrain.optim.epochs=2", "pretrain.optim.batch_size=8",
                 "pretrain.model.width=4", "pretrain.scaling.cpus_per_worker=1", "pretrain.scaling.max_failures=2"]


def test_search_spaces_and_their_checks():
    cfg = load_config(SweepConfig, None, ["lambda_scene.values=[0.0,0.2,0.5]", "lambda_mask.kind=loguniform",
                                          "lambda_mask.low=0.1", "lambda_mask.high=2.0", "num_samples=2"])
    space = param_space(cfg)
    assert space["lambda_scene"] == tune.grid_search([0.0, 0.2, 0.5])
    assert isinstance(space["lambda_mask"], tune.search.sample.Float)
    assert (space["lambda_mask"].lower, space["lambda_mask"].upper) == (0.1, 2.0)
    assert num_trials(cfg) == 6  # 3 grid points x 2 samples of the random weight
    with pytest.raises(ConfigError, match=r"lambda_mask\.low: loguniform needs low > 0"):
        load_config(SweepConfig, None, ["lambda_mask.kind=loguniform", "lambda_mask.low=0"])
    with pytest.raises(ConfigError, match=r"lambda_scene\.values: loss weights must be >= 0"):
        load_config(SweepConfig, None, ["lambda_scene.values=[-1]"])
    with pytest.raises(ConfigError, match=r"metric: 'test_acc' is not SPLIT_MEASURE"):
        load_config(SweepConfig, None, ["metric=test_acc"])


def test_trials_are_sized_so_that_workers_and_data_fit():
    cfg = load_config(SweepConfig, None, ["pretrain.scaling.cpus_per_worker=1"])
    # driver 0.25 + worker 1 + one clip task 0.5 = 1.75 CPUs per trial
    assert concurrent_runs(cfg.pretrain, cfg.trial_cpus, {"CPU": 4.0}) == 2
    assert concurrent_runs(cfg.pretrain, cfg.trial_cpus, {"CPU": 1.0}) == 1
    gpu = load_config(SweepConfig, None, ["pretrain.scaling.use_gpu=true", "pretrain.scaling.num_workers=2"])
    assert concurrent_runs(gpu.pretrain, gpu.trial_cpus, {"CPU": 64.0, "GPU": 8.0}) == 4


def test_best_trial_follows_the_metrics_direction():
    rows = [{"trial": "a", "lambda_scene": 0.1, "lambda_mask": 1.0, "seed": 0, "val_acc": 0.5, "val_loss": 0.9,
             "status": "TERMINATED"},
            {"trial": "b", "lambda_scene": 0.2, "lambda_mask": 1.0, "seed": 0, "val_acc": 0.7, "val_loss": 1.2,
             "status": "TERMINATED"},
            {"trial": "c", "lambda_scene": 0.5, "lambda_mask": 1.0, "seed": 0, "val_acc": None, "val_loss": None,
             "status": "ERROR"}]
    assert best_trial(rows, "val_acc")["trial"] == "b"  # an accuracy is maximised
    assert best_trial(rows, "val_loss")["trial"] == "a"  # a loss is minimised
    with pytest.raises(RuntimeError, match="no trial reported 'ood_acc'"):
        best_trial(rows, "ood_acc")


def test_one_direction_for_schedule_checkpoints_and_sweeps():
    """The plateau schedule, the checkpoint ranking and Tune's mode read one rule: with the masked-clip
    entropy (maximised by the mask loss) the schedule used to minimise what the ranking maximised."""
    from debias.training.metrics import mode
    from debias.training.train import LRSchedule, OptimConfig

    assert mode("val_masked_entropy") == "max" and mode("ood_acc") == "max" and mode("train_loss") == "min"
    schedule = LRSchedule(OptimConfig(schedule="plateau", plateau_metric="val_masked_entropy",
                                      plateau_patience_epochs=0, head_warmup_epochs=0))
    for epoch, entropy in enumerate([1.0, 1.2, 1.4]):  # rising entropy is improvement: no decay
        schedule.observe(epoch, {"val_masked_entropy": entropy})
    assert schedule.plateau_factor == 1.0


def test_seeds_cross_the_grid_and_the_best_pair_is_chosen_on_its_mean():
    cfg = load_config(SweepConfig, None, ["lambda_scene.values=[0.1,0.2]", "lambda_mask.values=[1.0]", "seeds=[0,1,2]"])
    assert param_space(cfg)["seed"] == tune.grid_search([0, 1, 2]) and num_trials(cfg) == 6
    with pytest.raises(ConfigError, match=r"seeds: must list at least one seed, each once"):
        load_config(SweepConfig, None, ["seeds=[1,1]"])
    # pair 0.2 has the single best run (0.9) but the lower mean: the pair 0.1 wins, through its seed-0 trial
    ood = {(0.1, 0): 0.6, (0.1, 1): 0.7, (0.1, 2): 0.8, (0.2, 0): 0.9, (0.2, 1): 0.3, (0.2, 2): None}
    rows = [{"trial": f"t{scene}_{seed}", "lambda_scene": scene, "lambda_mask": 1.0, "seed": seed, "ood_acc": v,
             "status": "ERROR" if v is None else "TERMINATED"} for (scene, seed), v in ood.items()]
    pairs = weight_rows(rows, "ood_acc")
    assert [(p["lambda_scene"], p["seeds"]) for p in pairs] == [(0.1, 3), (0.2, 2)]
    assert pairs[0]["ood_acc_mean"] == pytest.approx(0.7) and pairs[0]["ood_acc_std"] == pytest.approx(0.1)
    assert pairs[1]["ood_acc_mean"] == pytest.approx(0.6)
    best = best_trial(rows, "ood_acc")
    assert (best["trial"], best["seed"], best["seeds"]) == ("t0.1_0", 0, 3)
    assert best["ood_acc_mean"] == pytest.approx(0.7)


@pytest.fixture(scope="module")
def ray_local():
    """This module's Ray is the jobs' own (`init_ray`: with the dashboard, whose State API Ray Train
    needs to free an ASHA-stopped trial's workers), beside a second Ray instance on the same machine,
    which made Ray Train's placement-group cleaner give up ("multiple active Ray instances")."""
    import os
    import signal
    import subprocess
    import sys

    import ray

    other = subprocess.Popen([sys.executable, "-c", "import ray, time; ray.init(address=\"local\", num_cpus=1, include_dashboard=False); "
                              "print('up', flush=True); time.sleep(3600)"], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "up"
    before = os.environ.get("RAY_API_SERVER_ADDRESS")
    own_ray()
    init_ray(4)
    yield ray
    ray.shutdown()
    os.environ.pop("RAY_API_SERVER_ADDRESS", None) if before is None else os.environ.update(RAY_API_SERVER_ADDRESS=before)
    other.send_signal(signal.SIGINT)  # its ray.init's exit handler stops that instance
    other.wait(timeout=60)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("bench")
    run_synth(load_config(SynthConfig, None, [f"out={out / 'synth'}", "train_per_class=4", "val_per_class=2",
                                              "ood_val_per_class=2", "ood_test_per_class=2", "target_train_per_class=0", "target_test_per_class=0",
                                              "frame_size_px=32", "num_frames=8"]))
    pre = load_config(PreprocessConfig, None, [
        f"out={out / 'data'}", f"input.manifest={out / 'synth/source/manifest.csv'}", "decode.num_frames=8",
        "labels.mask_provider=annotations", "labels.scene_provider=annotations"])
    run_preprocess(pre)
    return pre.out


def test_asha_without_the_state_api_fails_before_any_trial(tmp_path, shards, monkeypatch):
    import debias.experiments.sweep

    assert debias.experiments.sweep.state_api_error() is None  # this module's Ray has it
    monkeypatch.setattr(debias.experiments.sweep, "state_api_error", lambda: "Failed to connect to API server")
    cfg = load_config(SweepConfig, None, TINY_TRAINING + [f"storage={tmp_path}", f"pretrain.shards={shards}"])
    with pytest.raises(SystemExit, match=r"asha\.enabled=true needs Ray's State API.*Failed to connect"):
        run_sweep(cfg)
    assert not (tmp_path / "sweep").exists()  # nothing started


def _live_placement_groups() -> list:
    import ray

    return [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]


@pytest.mark.slow
def test_asha_stops_the_weak_trial_an_interrupted_sweep_resumes_and_the_best_is_picked(tmp_path, shards, caplog):
    """One trial at a time, best by train_loss (min). The mask term of the loss is -lambda_mask x the
    masked clips' entropy (~ -1.7 x lambda_mask here), so the weights order the trials for sure: the
    lambda_mask=0 trial is worse than the first at the grace rung and ASHA stops it; the third crashes on
    its first start (the sweep ends with an error), and the same command again resumes it alone: the
    finished trials are kept, and it gets the resources a stopped trial released (its Train workers and
    placement group) and wins."""
    starts = tmp_path / "starts.txt"

    def flaky(config, base, runs_dir):
        """The real trial driver, except that the lambda_mask=2.0 trial fails on its first start."""
        with open(starts, "a") as f:
            f.write(f"{config['lambda_mask']}\n")
        if config["lambda_mask"] == 2.0 and starts.read_text().count("2.0") == 1:
            raise RuntimeError("simulated crash of a trial")
        trial_driver(config, base, runs_dir)

    cfg = load_config(SweepConfig, None, TINY_TRAINING + [
        f"storage={tmp_path}", "lambda_scene.values=[0.0]", "lambda_mask.values=[1.0,0.0,2.0]", "asha.grace_period=1",
        "asha.reduction_factor=2", "metric=train_loss", "allow_in_distribution_metric=true",
        "max_concurrent_trials=1", f"pretrain.shards={shards}"])
    first = run_sweep(cfg, flaky)
    assert len(first.errors) == 1 and "simulated crash" in first.errors[0]
    assert {t["lambda_mask"]: t["status"] for t in first.trials} == {1.0: "TERMINATED", 0.0: "TERMINATED", 2.0: "ERROR"}

    sweep_log = logging.getLogger("debias.experiments.sweep")  # its own handler: debias.cluster stops propagation
    sweep_log.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="debias.experiments.sweep"):
            summary = run_sweep(cfg, flaky)  # same storage/name: Tuner.restore, errored trials resumed
    finally:
        sweep_log.removeHandler(caplog.handler)
    # the trial that crashed before its Train run started left no run folder
    assert f"sweep: resuming {tmp_path / 'sweep'} (trial runs there: 2; finished trials are kept" in caplog.text
    assert summary.errors == []
    assert sorted(starts.read_text().split()) == ["0.0", "1.0", "2.0", "2.0"]  # the finished trials ran once
    trials = {t["lambda_mask"]: t for t in summary.trials}
    assert all(t["status"] == "TERMINATED" and t["train_loss"] is not None for t in trials.values())
    assert (trials[0.0]["epochs"], trials[0.0]["stopped_early"]) == (1, True)
    assert [(trials[w]["epochs"], trials[w]["stopped_early"]) for w in (1.0, 2.0)] == [(2, False), (2, False)]
    for w in (1.0, 0.0):  # kept from the first sweep: one metrics line per epoch, none written again
        lines = (tmp_path / "sweep" / "runs" / trials[w]["trial"] / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == trials[w]["epochs"], w
    assert summary.best["lambda_mask"] == 2.0
    assert summary.best["train_loss"] == min(t["train_loss"] for t in summary.trials)
    assert read_sweep(str(tmp_path / "sweep")) == summary  # the record on disk is the one returned
    # every epoch reached Tune (ASHA needs them) and the trial's own metrics file
    best = summary.best
    assert best["epochs"] == len(read_metrics(best["run"]))
    assert (Path(best["checkpoint"]) / "state.pt").is_file()
    for plot in ("sweep.png", "curves.png"):
        assert (tmp_path / "sweep" / plot).stat().st_size > 5000
    deadline = time.time() + 30  # Train's placement-group cleaner runs asynchronously
    while _live_placement_groups() and time.time() < deadline:
        time.sleep(1)
    assert not _live_placement_groups()

    # through the job's own command line (`debias sweep`, the driver): another config in that folder is refused
    from ray_jobs.sweep import main

    with pytest.raises(SystemExit, match="holds a sweep with another config"):
        main([*TINY_TRAINING, f"storage={tmp_path}", "lambda_scene.values=[0.1]", f"pretrain.shards={shards}"])
