"""Transfer: run planning and the table (no cluster), then the whole `debias pipeline` on a tiny
synthetic benchmark: preprocess -> baseline -> sweep -> transfer to the synthetic target task + scene
bias -> report, and a rerun that skips every finished stage."""

from pathlib import Path

import pytest

from debias.config import ConfigError, load_config
from debias.experiments.pipeline import best_pair_trials, transfer_comparisons, transfer_pairs
from debias.experiments.sweep import SweepResult
from debias.experiments.transfer import FoldConfig, TargetConfig, TransferConfig, run_specs, transfer_table


ROOT = Path(__file__).resolve().parents[1]


def test_runs_cover_every_pretraining_target_and_split_with_fresh_heads_and_no_debias_loss(tmp_path):
    (tmp_path / "run" / "checkpoint_2").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint_2" / "state.pt").write_bytes(b"")
    (tmp_path / "run" / "checkpoint_1").mkdir()
    cfg = TransferConfig(out=str(tmp_path), pretrained={"baseline": str(tmp_path / "run"), "scratch": ""},
                         targets={"ucf101": TargetConfig(folds=[FoldConfig(shards=f"u{k}") for k in (1, 2, 3)]),
                                  "diving48": TargetConfig(folds=[FoldConfig(shards="d1")])})
    specs = run_specs(cfg)
    assert [(s.pretrain, s.target, s.split) for s in specs][:4] == [
        ("baseline", "ucf101", 1), ("baseline", "ucf101", 2), ("baseline", "ucf101", 3), ("baseline", "diving48", 1)]
    assert len(specs) == 8 and len({s.config.name for s in specs}) == 8
    for s in specs:
        assert (s.config.loss.lambda_scene, s.config.loss.lambda_mask) == (0.0, 0.0)
        # a run directory stands for its latest checkpoint
        assert s.config.model.init_from == ("" if s.pretrain == "scratch" else str(tmp_path / "run" / "checkpoint_2"))
        assert (s.config.train_split, s.config.eval_splits) == ("train", ["test"])
        # the test fold is reported on, never chosen on: the kept checkpoints are ranked by the training loss
        assert (s.config.report_splits, s.config.best_metric) == (["test"], "train_loss")
    rows = [{"pretrain": "a", "target": "t", "split": k, "top1": v} for k, v in ((1, 0.5), (2, 0.7))]
    assert transfer_table(rows, ["t", "u"]) == [{"pretrain": "a", "t": pytest.approx(0.6), "u": None}]
    # a recipe that would choose on the test fold (its plateau schedule) fails before any run
    cfg.finetune.optim.schedule, cfg.finetune.optim.plateau_metric = "plateau", "test_loss"
    with pytest.raises(ConfigError, match="plateau_metric"):
        run_specs(cfg)
    with pytest.raises(ConfigError, match=r"pretrained\.sdn: needs a checkpoint directory"):
        load_config(TransferConfig, None, ["pretrained={sdn: ''}"])


def _sweep(trials: list[dict], best: dict, seeds: list[int]) -> SweepResult:
    return SweepResult(metric="ood_val_acc", mode="max", selection={}, path="", trials=trials, best=best,
                       by_weights=[], seeds=seeds, errors=[], wall_s=0.0, config={})


def test_each_seed_transfers_the_best_pairs_trial_of_that_seed():
    """Bugs: the lowest seed's trial (the sweep's `best` row) transferred at every seed, which pairs one
    backbone with several reference seeds; a trial of another weight pair; a seed with no checkpoint
    passed on as an empty path (which would fine-tune from scratch under the name sweep_best)."""
    trials = [{"trial": f"t{ls}_{s}", "lambda_scene": ls, "lambda_mask": 1.0, "seed": s, "status": "TERMINATED",
               "checkpoint": f"ck_{ls}_{s}"} for ls in (0.5, 1.0) for s in (0, 1)]
    best = {**trials[2], "ood_val_acc_mean": 0.5}  # lambda_scene 1.0, seed 0
    picked = best_pair_trials(_sweep(trials, best, [0, 1]))
    assert {s: t["checkpoint"] for s, t in picked.items()} == {0: "ck_1.0_0", 1: "ck_1.0_1"}
    trials[3]["checkpoint"] = ""
    with pytest.raises(RuntimeError, match=r"no checkpoint at seed\(s\) \[1\]"):
        best_pair_trials(_sweep(trials, best, [0, 1]))


def test_transfer_comparisons_pair_the_seeds_over_the_mean_of_the_splits():
    """Hand-computed: per seed, the mean over the two splits; sweep_best - baseline = +0.1, +0.2, +0.3 on
    seeds 0-2: mean 0.2, sd 0.1, paired t interval 0.2 -+ t(0.975, 2) * 0.1 / sqrt(3), t(0.975, 2) =
    4.302653. Bugs: unpaired or swapped differences, one split standing for the target, a missing pair."""
    base = {0: (0.4, 0.6), 1: (0.5, 0.5), 2: (0.3, 0.5)}  # per-seed means 0.5, 0.5, 0.4
    gain = {0: 0.1, 1: 0.2, 2: 0.3}
    rows = [{"pretrain": pre, "target": "t", "split": k + 1, "seed": s, "top1": v + (gain[s] if pre == "sweep_best" else 0)}
            for pre in ("baseline", "sweep_best") for s, pair in base.items() for k, v in enumerate(pair)]
    rows += [{"pretrain": "scratch", "target": "t", "split": k, "seed": s, "top1": 0.2} for s in base for k in (1, 2)]
    pairs = transfer_pairs(["baseline"], scratch=True)
    assert pairs == (("sweep_best", "baseline"), ("sweep_best", "scratch"), ("baseline", "scratch"))
    out = {e["comparison"]: e for e in transfer_comparisons(rows, ["t"], pairs)}
    gain_row = out["sweep_best - baseline"]
    half = 4.302653 * 0.1 / 3 ** 0.5
    assert gain_row["metric"] == "t" and gain_row["seeds"] == 3
    assert gain_row["differences"] == {"0": pytest.approx(0.1), "1": pytest.approx(0.2), "2": pytest.approx(0.3)}
    assert (gain_row["mean"], gain_row["t_low"], gain_row["t_high"]) == pytest.approx((0.2, 0.2 - half, 0.2 + half), abs=1e-5)
    assert gain_row["verdict"] == "undecided"  # half-width 0.248: three seeds of this spread cannot tell
    # 0.3, 0.3, 0.2: mean 0.267, sd 0.0577, half-width 0.143: the lower end is above 0
    scratch = out["baseline - scratch"]
    assert (scratch["mean"], scratch["verdict"]) == (pytest.approx((0.3 + 0.3 + 0.2) / 3), "holds")
    # one seed: the difference, no interval (the keys stay, so tables print n/a)
    one = transfer_comparisons([r for r in rows if r["seed"] == 0], ["t"], pairs)[0]
    assert (one["seeds"], one["mean"], one["t_low"], one["verdict"]) == (1, pytest.approx(0.1), None, "no interval (one seed)")


def test_the_pipeline_pairs_each_seeds_backbones_and_fine_tunes_them_with_that_seed(tmp_path, monkeypatch):
    """The pipeline's wiring with every stage replaced by a fake that records what it was given (the stages
    themselves run for real in test_s3.py). Bugs: every seed transferring the first seed's backbones, a
    reference pretrained once for all seeds, fine-tuning at seed 0 whatever the backbone's seed."""
    import debias.experiments.pipeline as pipeline
    from debias.experiments.transfer import TransferResult

    pretrained_runs, transfers = [], []

    def fake_pretrain(run):
        pretrained_runs.append((run.name, run.seed, run.loss.lambda_scene, run.loss.lambda_mask))
        return {"checkpoint": f"ck/{run.name}/seed{run.seed}", "history": [], "run": ""}

    def fake_sweep(cfg):
        trials = [{"trial": f"t{ls}_{s}", "lambda_scene": ls, "lambda_mask": 1.0, "seed": s, "status": "TERMINATED",
                   "ood_val_acc": 0.2 + ls, "checkpoint": f"trial/{ls}/seed{s}", "run": f"trial/{ls}"}
                  for ls in (0.5, 1.0) for s in cfg.seeds]
        best = {**trials[-2], "ood_val_acc_mean": 1.2, "ood_val_acc_std": 0.0, "seeds": 2}  # 1.0, seed 0
        return SweepResult(metric="ood_val_acc", mode="max", selection={}, path="", trials=trials, best=best,
                           by_weights=[], seeds=cfg.seeds, errors=[], wall_s=0.0, config={})

    def fake_transfer(cfg):
        transfers.append(cfg)
        seed = cfg.finetune.seed
        rows = [{"pretrain": p, "target": "target", "split": 1, "top1": 0.5 + 0.1 * seed, "epochs": 1} for p in cfg.pretrained]
        return TransferResult(transfer=rows, table=[], bias={}, dataset_bias={}, wall_s=0.0, config={})

    monkeypatch.setattr(pipeline, "run_preprocess", lambda pre: {"out": pre.out})
    monkeypatch.setattr(pipeline, "run_pretrain", fake_pretrain)
    monkeypatch.setattr(pipeline, "run_sweep", fake_sweep)
    monkeypatch.setattr(pipeline, "run_transfer", fake_transfer)
    monkeypatch.setattr(pipeline.runs, "read_metrics", lambda run: [])
    captured = {}
    monkeypatch.setattr(pipeline, "write_report", lambda cfg, out, stages, sweep, transfers, histories, wall_s:
                        captured.update(transfers=transfers, stages=stages))
    cfg = load_config(pipeline.PipelineConfig, None, [f"out={tmp_path}", "targets={target: {}}", "sweep.seeds=[0,1]",
                                                      "sweep.lambda_scene.values=[0.5,1.0]", "sweep.lambda_mask.values=[1.0]"])
    pipeline.run_pipeline(cfg)
    assert sorted(pretrained_runs) == [("baseline", 0, 0.0, 0.0), ("baseline", 1, 0.0, 0.0)]
    assert [(t.finetune.seed, t.pretrained) for t in transfers] == [
        (s, {"baseline": f"ck/baseline/seed{s}", "sweep_best": f"trial/1.0/seed{s}", "scratch": ""}) for s in (0, 1)]
    assert [t.out for t in transfers] == [f"{tmp_path}/transfer_seed0", f"{tmp_path}/transfer_seed1"]
    assert set(captured["transfers"]) == {0, 1}
    # one stage per seed for the references and the transfers (each resumable on its own)
    stages = captured["stages"].hashes
    assert {"pretrain_baseline_seed0", "pretrain_baseline_seed1", "transfer_seed0", "transfer_seed1"} <= set(stages)
