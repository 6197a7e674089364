"""The whole chain on Ray, on a tiny benchmark: synth -> preprocess -> 4 x pretrain -> report.
(Resuming a run: tests/test_train.py.)"""

import json

from debias.config import load_config
from debias.train import read_metrics
from ray_jobs.demo import DemoConfig, run_demo

TINY = ["synth.train_per_class=4", "synth.val_per_class=2", "synth.ood_per_class=2",
        "synth.target_train_per_class=1", "synth.target_test_per_class=1", "synth.frame_size_px=32",
        "synth.num_frames=8", "decode.num_frames=8", "pretrain.clip.clip_len=8", "pretrain.optim.epochs=2",
        "pretrain.optim.batch_size=8", "pretrain.model.width=4"]


def test_demo_runs_the_whole_chain_and_reports(tmp_path, ray_local):
    cfg = load_config(DemoConfig, None, TINY + [f"out={tmp_path / 'demo'}"])
    summary = run_demo(cfg)
    out = tmp_path / "demo"
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["claim"] == summary["claim"]
    for run in ("baseline", "scene_only", "mask_only", "sdn"):
        for key in ("val_acc", "ood_acc"):
            assert 0.0 <= on_disk[run][key] <= 1.0
        assert len(read_metrics(out / "runs" / run)) == 2
    assert (on_disk["baseline"]["lambda_scene"], on_disk["baseline"]["lambda_mask"]) == (0.0, 0.0)
    assert on_disk["sdn"]["lambda_scene"] > 0 and on_disk["sdn"]["lambda_mask"] > 0
    assert on_disk["data"]["ok_by_split"] == {"train": 24, "val": 12, "ood": 12}
    assert "sdn" in (out / "report.md").read_text() and (out / "curves.png").stat().st_size > 1000
    # SDN trains its mask branch: the masked-clip entropy is measured and in [0, log 6].
    assert 0.0 <= on_disk["sdn"]["val_masked_entropy"] <= 1.7918

