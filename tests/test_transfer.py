"""Transfer: run planning and the table (no cluster), then the whole `debias pipeline` on a tiny
synthetic benchmark: preprocess -> baseline -> sweep -> transfer to the synthetic target task + scene
bias -> report, and a rerun that skips every finished stage."""

import json
import math
from pathlib import Path

import pytest

from debias.config import ConfigError, load_config
from debias.experiments.transfer import FoldConfig, TargetConfig, TransferConfig, run_specs, transfer_table
from debias.experiments.pipeline import PipelineConfig, read_pipeline, run_pipeline

from conftest import PIPELINE_TINY

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
    rows = [{"pretrain": "a", "target": "t", "split": k, "top1": v} for k, v in ((1, 0.5), (2, 0.7))]
    assert transfer_table(rows, ["t", "u"]) == [{"pretrain": "a", "t": pytest.approx(0.6), "u": None}]
    with pytest.raises(ConfigError, match=r"pretrained\.sdn: needs a checkpoint directory"):
        load_config(TransferConfig, None, ["pretrained={sdn: ''}"])


TINY = PIPELINE_TINY


def test_pipeline_on_the_synthetic_benchmark_then_a_rerun_skips_every_stage(tmp_path, ray_local):
    cfg = load_config(PipelineConfig, ROOT / "configs/pipeline/quick.yaml", TINY + [f"out={tmp_path}"])
    summary = run_pipeline(cfg)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    trials = on_disk["sweep"]["trials"]
    assert sorted(t["lambda_scene"] for t in trials) == [0.2, 0.5] and all(t["lambda_mask"] == 1.0 for t in trials)
    metric = cfg.sweep.metric
    assert all(0.0 <= t[metric] <= 1.0 for t in trials)
    assert on_disk["sweep"]["best"][metric] == max(t[metric] for t in trials)
    rows = on_disk["transfer"]
    assert {(r["pretrain"], r["target"], r["split"]) for r in rows} == {("baseline", "target", 1),
                                                                       ("sweep_best", "target", 1)}
    assert all(0.0 <= r["top1"] <= 1.0 and r["epochs"] == 2 for r in rows)
    # the fine-tuning started from the pretrained backbone
    run_cfg = json.loads((tmp_path / "transfer/runs/baseline__target__split1/config.json").read_text())["config"]
    assert Path(run_cfg["model"]["init_from"]).parent.parent == tmp_path / "pretrain_baseline"
    for name in ("baseline", "sweep_best"):
        bias = on_disk["bias"][name]
        # the measures are the ones their definitions give from the reported parts (docs/pipeline.md)
        chance = bias["action_chance"]
        assert bias["representation_bias"] == pytest.approx(math.log(max(bias["scene_only_probe_acc"], chance) / chance))
        assert bias["counterfactual_drop"] == pytest.approx(bias["counterfactual_clean_acc"] - bias["counterfactual_acc"])
        assert bias["scene_mdl_compression"] == pytest.approx(bias["scene_mdl_uniform_bits"] / bias["scene_mdl_bits"])
        test_videos = bias["videos"]["test"]
        for key in ("masked_action_acc", "counterfactual_acc", "counterfactual_follows_background"):
            assert bias[key] * test_videos == pytest.approx(round(bias[key] * test_videos)), key  # a share of videos
        # the field's measures beside them (SCUBA, HAT): the clean clips are the same pixels as the project's own
        assert bias["clean_top1"] == pytest.approx(bias["counterfactual_clean_acc"])
        assert bias["scuba_top1_stripes_low"] <= bias["scuba_top1_stripes"] <= bias["scuba_top1_stripes_high"]
    assert 0.0 < on_disk["dataset_bias"]["scene_label_action_acc"] <= 1.0  # once per dataset, not per model
    for f in ("report.md", "transfer.png", "pretrain_curves.png", "transfer_curves.png"):
        assert (tmp_path / f).stat().st_size > 500
    assert "sweep_best" in (tmp_path / "report.md").read_text()
    assert "scuba_top1" in (tmp_path / "report.md").read_text()  # the bias table has the field's columns

    again = run_pipeline(cfg)
    assert set(again.skipped) == {"synth", "data_source", "data_target_split1", "pretrain_baseline", "sweep",
                                     "transfer"}
    assert again.transfer == summary.transfer and again.sweep == summary.sweep
    assert read_pipeline(str(tmp_path)) == again  # the record on disk is the one returned
