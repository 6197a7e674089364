"""The preprocess job on Ray Data: shards, schema, the error table, idempotent reruns, real clips."""

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from debias.curate import DecodeConfig, InputConfig, LabelsConfig, PreprocessConfig, shard_files
from debias.schema import SHARD_SCHEMA, shard_schema_markdown
from debias.synth import SynthConfig, generate
from debias.video import decode_jpeg, decode_window, unpack_mask
from ray_jobs.preprocess import run_preprocess

TINY = dict(train_per_class=2, val_per_class=1, ood_per_class=1, target_train_per_class=0, target_test_per_class=0)


def _read_shards(out):
    return pq.read_table([str(f) for f in shard_files(out / "shards")])


def test_preprocess_writes_schema_shards_and_accounts_for_every_video(tmp_path, ray_local):
    generate(SynthConfig(out=str(tmp_path / "synth"), **TINY))
    task = tmp_path / "synth" / "source"
    videos = sorted((task / "videos").glob("*.mp4"))
    videos[0].write_bytes(b"")  # zero bytes
    videos[1].write_text("not a video\n" * 50)  # text named .mp4
    videos[2].write_bytes(videos[3].read_bytes()[:1500])  # truncated mid-stream
    (task / "annotations" / f"{videos[4].stem}.npz").unlink()  # no ground truth for this one
    with open(task / "manifest.csv", "a") as f:
        f.write("jump,ghost_video,0,2,train\n")  # file missing
        f.write("jump,,0,2,train\n")  # malformed: no id
        f.write("wave,bad_times,zero,2,val\n")  # malformed: time
    n_in = 6 * 4 + 3
    cfg = PreprocessConfig(out=str(tmp_path / "out"), input=InputConfig(manifest=str(task / "manifest.csv")))

    summary = run_preprocess(cfg)
    out = tmp_path / "out"
    assert summary["videos_in"] == n_in
    assert summary["videos_ok"] + summary["videos_failed"] == n_in
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    by_id = {e["video_id"]: e for e in errors}
    assert by_id[videos[0].stem]["reason_code"] == "empty_file" and videos[0].name in by_id[videos[0].stem]["reason"]
    assert by_id[videos[1].stem]["reason_code"] == "undecodable"
    assert by_id["ghost_video"]["reason_code"] == "missing_file"
    assert by_id[videos[4].stem]["stage"] == "masks"
    assert sum(e["reason_code"] == "malformed_manifest_row" for e in errors) == 2
    assert summary["failures_by_reason"]["malformed_manifest_row"] == 2
    assert json.loads((out / "summary.json").read_text())["videos_ok"] == summary["videos_ok"]

    table = _read_shards(out)
    assert table.schema.remove_metadata() == SHARD_SCHEMA
    assert table.num_rows == summary["videos_ok"] >= n_in - 7  # the truncated file may keep its first frames
    assert len(set(table.column("video_id").to_pylist())) == table.num_rows
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["frames"]) == len(row["human_masks"]) == 16
    assert decode_jpeg(row["frames"][0]).shape == (32, 32, 3)
    masks = np.stack([unpack_mask(m, row["height"], row["width"]) for m in row["human_masks"]])
    assert np.allclose(masks.mean(axis=(1, 2)), row["mask_coverage"], atol=1e-6)
    assert row["person_frac"] == 1.0 and row["mask_source"] == "annotations"
    assert sum(row["scene_probs"]) == 1.0 and row["scene_probs"][row["scene_id"]] == 1.0
    classes = json.loads((out / "classes.json").read_text())
    assert classes[row["label_id"]] == row["label"]

    # A rerun replaces the shards instead of appending to them.
    run_preprocess(cfg)
    assert _read_shards(out).num_rows == table.num_rows


def test_bad_config_and_missing_inputs_fail_before_work(tmp_path, ray_local):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        run_preprocess(PreprocessConfig(out=str(tmp_path / "o"), input=InputConfig(manifest=str(tmp_path / "x.csv"))))
    (tmp_path / "m.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    with pytest.raises(FileNotFoundError, match="scenes.json"):
        run_preprocess(PreprocessConfig(out=str(tmp_path / "o"), input=InputConfig(manifest=str(tmp_path / "m.csv"))))
    assert not (tmp_path / "o").exists()


def test_real_clips_decode_into_shards(tmp_path, real_clips, ray_local):
    meta = list(csv.DictReader(open(real_clips / "MANIFEST.tsv"), delimiter="\t"))
    for m in meta[:6]:  # frame counts come from decoding, not from (sometimes broken) container metadata
        assert len(decode_window(real_clips / m["filename"]).frames) == int(m["frames_decoded"]), m["filename"]
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for m in meta:
            w.writerow([m["action_class"], m["filename"], 0, "", "train"])
    cfg = PreprocessConfig(out=str(tmp_path / "out"),
                           input=InputConfig(manifest=str(manifest), videos_dir=str(real_clips), video_template="{youtube_id}"),
                           decode=DecodeConfig(num_frames=8, short_side_px=64, crop_px=56),
                           labels=LabelsConfig(mask_provider="none", scene_provider="none"))
    summary = run_preprocess(cfg)
    assert summary["videos_ok"] == len(meta) == 18, summary["failures_by_reason"]
    assert summary["mask_source"] == ["none"] and summary["scene_source"] == ["none"]
    frames_decoded = {m["filename"]: int(m["frames_decoded"]) for m in meta}
    for row in _read_shards(tmp_path / "out").to_pylist():
        assert len(row["frames"]) == 8
        assert decode_jpeg(row["frames"][-1]).shape == (56, 56, 3)
        assert 0 <= min(row["frame_indices"]) and max(row["frame_indices"]) < frames_decoded[row["video_id"]]
        assert row["fps"] > 0


def test_readme_documents_the_shard_schema():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert shard_schema_markdown() in readme
