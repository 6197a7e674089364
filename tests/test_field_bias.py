"""`debias bias` end to end on a tiny curated synthetic benchmark (annotated person masks): a model that
reads only the scene is measured as such by every protocol; the Ray job gives the numbers the in-process
path gives, for a training run and for its export; the gates drop clips as rows with their reasons."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from debias.evaluation.bias import BiasConfig, load_clips
from debias.config import load_config
from debias.evaluation.field_bias import FieldMeasuresConfig, field_bias_measures, load_eval_model, plan_rows
from debias.training.models import SDN, ModelConfig
from debias.training.train import PretrainConfig
from test_bias import shards  # noqa: F401 - the tiny curated benchmark (bias=1), a fixture
from test_use import CLIP, write_run  # the tests folder is on the path (rootdir conftest)

# The synthetic figure covers a few percent of its 32 px frame: the Kinetics SCUBA rule (10 %) would drop
# every clip, so the measures run at 1 % here (the defaults are tested to drop them, with their reason).
SMALL_PEOPLE = ["gates.scuba_min_coverage=0.01", "gates.swap_min_coverage=0.005", "bootstrap=200"]
JOB_SMALL_PEOPLE = [f"measures.{o}" for o in SMALL_PEOPLE]


class SceneReader(nn.Module):
    """Reads the action off the background only: each clip's median colour over time and space (the
    figure is a few percent of the pixels), the nearest action centroid of the train clips."""

    def __init__(self, frames: np.ndarray, labels: np.ndarray) -> None:
        super().__init__()
        colours = self.colour(torch.from_numpy(frames))
        self.centroids = torch.stack([colours[torch.from_numpy(labels == a)].mean(0) for a in range(labels.max() + 1)])

    @staticmethod
    def colour(clips: torch.Tensor) -> torch.Tensor:
        return clips.float().flatten(1, 3).median(dim=1).values  # (B, 3)

    def forward(self, clips_uint8: torch.Tensor) -> tuple[torch.Tensor]:
        return (-torch.cdist(self.colour(clips_uint8), self.centroids),)


def test_a_scene_reader_fails_scuba_follows_the_swapped_background_and_names_empty_scenes(shards):
    cfg = load_config(FieldMeasuresConfig, None, SMALL_PEOPLE)
    train = load_clips(shards, "train", BiasConfig(clip_len=8, crop_px=32))
    reader = SceneReader(train.frames, train.label_id)
    m = field_bias_measures(reader, shards, 8, 32, cfg)
    assert m["clean_top1"] == 1.0  # bias=1: every val video is in its action's home scene
    assert m["background_only_top1"] == 1.0  # the people removed, it still names the action
    assert m["action_swap_background_acc"] == 1.0 and m["action_swap_actor_acc"] == 0.0  # it follows B's scene
    assert m["scuba_top1_stripes"] <= 0.5  # stripes hold no scene of any action
    assert m["human_only_top1"] <= 0.5  # the people alone on the mean colour: no scene to read
    assert m["contrasted_acc_stripes"] <= m["scuba_top1_stripes"]
    for k in ("clean_top1", "scuba_top1_stripes", "background_only_top1", "action_swap_actor_acc"):
        assert m[f"{k}_low"] <= m[k] <= m[f"{k}_high"], k
    assert not any(k.startswith("dropped_") for k in m)  # at 1 % no clip of the benchmark is dropped

    # the papers' defaults: the small synthetic figure fails the Kinetics SCUBA rule, each clip with its reason
    strict = field_bias_measures(reader, shards, 8, 32, FieldMeasuresConfig())
    assert strict["dropped_scuba_rule"] == 24 and np.isnan(strict["scuba_top1_stripes"])
    assert strict["background_only_top1"] == 1.0  # HAT's measures have their own rules


def test_swap_partners_are_of_another_action_and_reproducible(shards):
    cfg = FieldMeasuresConfig()
    plan = plan_rows(shards, cfg)
    assert plan.num_rows == 24
    labels, partners = plan["label_id"].to_pylist(), plan["partner_label_id"].to_pylist()
    assert all(a != b for a, b in zip(labels, partners))
    assert plan["partner_video_id"].to_pylist() == plan_rows(shards, cfg)["partner_video_id"].to_pylist()
    other = FieldMeasuresConfig(seed=1)
    assert plan["partner_video_id"].to_pylist() != plan_rows(shards, other)["partner_video_id"].to_pylist()
    with pytest.raises(ValueError, match="no rows in split 'nope'"):
        plan_rows(shards, FieldMeasuresConfig(split="nope"))


@pytest.mark.slow
def test_bias_job_on_a_run_and_its_export_matches_the_in_process_measures(shards, tmp_path):
    from debias.evaluation.export import ExportConfig, export_run
    from ray_jobs.bias import main

    from debias.curation.shards import read_classes, num_scenes

    classes = read_classes(shards)
    cfg = PretrainConfig(model=ModelConfig(width=4), clip=CLIP, eval_splits=["val"], shards=shards)
    torch.manual_seed(0)
    model = SDN(cfg.model, len(classes), num_scenes(shards)).eval()
    write_run(tmp_path / "run", model, cfg, classes, {"val": np.eye(len(classes), dtype=int).tolist()}, {"val_acc": 1.0})
    export_run(ExportConfig(run=str(tmp_path / "run"), out=str(tmp_path / "export")))

    main(["--run", str(tmp_path / "run"), "--shards", shards, "--out", str(tmp_path / "out"), *JOB_SMALL_PEOPLE,
          "examples=2", "measures.backgrounds.copies=2", "own.probe_steps=20"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["clips"] == 24 and summary["videos"] == 24 and summary["dropped"] == {}
    inline = field_bias_measures(load_eval_model(str(tmp_path / "run")).net, shards, 8, 32, load_config(
        FieldMeasuresConfig, None, [*SMALL_PEOPLE, "backgrounds.copies=2"]))
    for name, m in summary["metrics"].items():  # the Ray Data path pairs and orders the clips as this one
        assert m["value"] == pytest.approx(inline[name]) and m["ci_low"] <= m["value"] <= m["ci_high"], name
    # the clean clips are the curated pixels the model sees elsewhere (bias.load_clips)
    val = load_clips(shards, "val", BiasConfig(clip_len=8, crop_px=32))
    with torch.no_grad():
        clean = (model(torch.from_numpy(val.frames))[0].argmax(1).numpy() == val.label_id).mean()
    assert summary["metrics"]["clean_top1"]["value"] == pytest.approx(clean)
    assert "scene_probe_acc" in summary["own_measures"]  # the project's own measures beside them
    rows = pq.read_table(tmp_path / "out" / "clips.parquet").to_pylist()
    assert len(rows) == 24 and all(r["pred_scuba_stripes_1"] in classes for r in rows)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "scuba_top1_stripes" in report and "contrasted_acc_stripes" in report and "scene_probe_acc" in report
    assert (tmp_path / "out" / "bias_eval.png").stat().st_size > 0
    assert len(list((tmp_path / "out" / "examples").glob("*.png"))) == 2

    main(["--export", str(tmp_path / "export"), "--shards", shards, "--out", str(tmp_path / "out_export"),
          *JOB_SMALL_PEOPLE, "measures.backgrounds.copies=2", "own_measures=false"])
    exported = json.loads((tmp_path / "out_export" / "summary.json").read_text())
    assert {k: m["value"] for k, m in exported["metrics"].items()} == {k: m["value"] for k, m in summary["metrics"].items()}
    assert exported["own_measures"] == {"skipped": "own_measures=false"}

    # the papers' defaults drop every clip of the small synthetic figure from SCUBA: rows with their reason
    main(["--run", str(tmp_path / "run"), "--shards", shards, "--out", str(tmp_path / "strict"), "own_measures=false"])
    strict = json.loads((tmp_path / "strict" / "summary.json").read_text())
    assert strict["dropped"]["scuba_rule"] == 24 and strict["metrics"]["scuba_top1_stripes"]["value"] is None
    rows = pq.read_table(tmp_path / "strict" / "clips.parquet").to_pylist()
    assert all(r["drop_scuba"].startswith("scuba_rule") and r["pred_scuba_stripes_0"] is None for r in rows)
    assert "scuba_rule | 24" in (tmp_path / "strict" / "report.md").read_text()


def test_a_model_of_other_classes_and_a_missing_export_fail_clearly(shards, tmp_path):
    from ray_jobs.bias import main

    with pytest.raises(SystemExit, match="not a `debias export` folder"):
        main([f"export={tmp_path}", "--shards", shards, "--out", str(tmp_path / "o")])
    cfg = PretrainConfig(model=ModelConfig(width=4), clip=CLIP, eval_splits=["val"], shards=shards)
    write_run(tmp_path / "run", SDN(cfg.model, 2, 2).eval(), cfg, ["a", "b"], {"val": [[1, 0], [0, 1]]}, {"val_acc": 1.0})
    with pytest.raises(SystemExit, match="classes .* are not the model's"):
        main(["--run", str(tmp_path / "run"), "--shards", shards, "--out", str(tmp_path / "o")])


def test_a_corrupt_row_becomes_a_row_with_its_error_not_a_lost_block(shards):
    import pyarrow as pa

    from debias.evaluation.field_bias import make_build_fn

    cfg = FieldMeasuresConfig()
    plan = plan_rows(shards, cfg).slice(0, 3)
    frames = plan["frames"].to_pylist()
    frames[1] = [b"not a jpeg"] * len(frames[1])
    plan = plan.set_column(plan.schema.get_field_index("frames"), "frames", pa.array(frames, pa.list_(pa.binary())))
    out = make_build_fn(8, 32, cfg)(plan)
    assert out["built"][[0, 2], 0].all() and not out["built"][1].any()
    assert out["error"][1].startswith(f"{out['video_id'][1]}: VideoError") and out["error"][0] == out["error"][2] == ""
