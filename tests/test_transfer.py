"""Transfer: run planning and the table (no cluster), then the whole `debias pipeline` on a tiny
synthetic benchmark: preprocess -> baseline -> sweep -> transfer to the synthetic target task + scene
bias -> report, and a rerun that skips every finished stage."""

from pathlib import Path

import pytest

from debias.config import ConfigError, load_config
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
