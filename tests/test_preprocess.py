"""The preprocess job on Ray Data: shards, schema, the error table, committed reruns, real clips,
sampling policies, rotation and variable frame rates. Killing and resuming: test_resume.py."""

import csv
import json
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pytest

from debias.curation.curate import DecodeConfig, InputConfig, PreprocessConfig, make_decode_fn
from debias.curation.download import find_ffmpeg
from debias.curation.labels.config import LabelsConfig
from debias.curation.shards import SHARD_SCHEMA, committed_run, num_scenes, read_classes, read_errors, read_parquet, read_scene_names, read_summary, shard_files, shard_schema_markdown, summary_digest
from debias.curation.codecs import decode_jpeg, unpack_mask
from debias.curation.synth import SynthConfig, generate
from debias.curation.video import decode_clips, decode_window, pick_uniform, write_mp4
from debias.curation.preprocess import run_preprocess
from ray_jobs.preprocess import main

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(train_per_class=2, val_per_class=1, ood_val_per_class=0, ood_test_per_class=1, target_train_per_class=0, target_test_per_class=0)
ANNOTATIONS = LabelsConfig(mask_provider="annotations", scene_provider="annotations")
NO_LABELS = ["labels.mask_provider=none", "labels.scene_provider=none"]


def _read_shards(out):
    return pa.concat_tables([read_parquet(f) for f in shard_files(str(out))])


def _row(path):
    return {"video_id": Path(path).stem, "source_path": str(path), "time_start": 0.0, "time_end": -1.0,
            "error": "", "error_code": "", "error_stage": ""}


def test_preprocess_writes_schema_shards_and_accounts_for_every_video(tmp_path, ray_local):
    generate(SynthConfig(out=str(tmp_path / "synth"), **TINY))
    task = tmp_path / "synth" / "source"
    videos = sorted((task / "videos").glob("*.mp4"))
    videos[0].write_bytes(b"")  # zero bytes
    videos[1].write_text("not a video\n" * 50)  # text named .mp4
    videos[2].write_bytes(videos[3].read_bytes()[:1500])  # truncated mid-stream
    (task / "annotations" / f"{videos[4].stem}.npz").unlink()  # no ground truth for this one
    with av.open(str(videos[5]), "w") as c:  # audio only, named .mp4
        s = c.add_stream("aac", rate=8000)
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        sound.sample_rate = 8000
        for p in [*s.encode(sound), *s.encode()]:
            c.mux(p)
    with open(task / "manifest.csv", "a") as f:
        f.write("jump,ghost_video,0,2,train\n")  # file missing
        f.write("jump,,0,2,train\n")  # malformed: no id
        f.write("wave,bad_times,zero,2,val\n")  # malformed: time
    n_in = 6 * 4 + 3
    cfg = PreprocessConfig(out=str(tmp_path / "out"), input=InputConfig(manifest=str(task / "manifest.csv")),
                           labels=ANNOTATIONS)

    summary = run_preprocess(cfg)
    out = tmp_path / "out"
    assert summary["videos_in"] == n_in
    assert summary["videos_ok"] + summary["videos_failed"] == n_in
    errors = read_errors(str(out)).to_pylist()
    by_id = {Path(e["source_path"]).stem: e for e in errors if e["source_path"]}  # ids carry the window
    assert by_id[videos[0].stem]["error_code"] == "empty_file" and videos[0].name in by_id[videos[0].stem]["error"]
    assert by_id[videos[1].stem]["error_code"] == "undecodable"
    assert by_id[videos[5].stem]["error_code"] == "no_video_stream" and "audio only" in by_id[videos[5].stem]["error"]
    assert by_id["ghost_video"]["error_code"] == "missing_file"
    assert by_id[videos[4].stem]["error_stage"] == "masks"
    assert sum(e["error_code"] == "malformed_manifest_row" for e in errors) == 2
    assert summary["failures_by_reason"]["malformed_manifest_row"] == 2
    assert {"read_source", "pipeline", "total"} <= set(summary["timings_s"]) and summary["stage_task_s"]["decode"] > 0
    assert read_summary(str(out)) == json.loads(json.dumps(summary))
    assert (summary["videos_resumed"], summary["videos_processed"]) == (0, n_in)

    table = _read_shards(out)
    assert table.schema.remove_metadata() == SHARD_SCHEMA
    assert table.num_rows == summary["videos_ok"] >= n_in - 8  # the truncated file may keep its first frames
    assert len(set(table.column("video_id").to_pylist())) == table.num_rows
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["frames"]) == len(row["human_masks"]) == 16 and row["clip_index"] == 0 and not row["padded"]
    assert decode_jpeg(row["frames"][0]).shape == (32, 32, 3)
    masks = np.stack([unpack_mask(m, row["height"], row["width"]) for m in row["human_masks"]])
    assert np.allclose(masks.mean(axis=(1, 2)), row["mask_coverage"], atol=1e-6)
    assert row["person_frac"] == 1.0 and row["mask_source"] == "annotations"
    assert sum(row["scene_probs"]) == 1.0 and row["scene_probs"][row["scene_id"]] == 1.0
    classes = read_classes(str(out))
    assert classes[row["label_id"]] == row["label"]
    scenes = read_scene_names(str(out))  # the synthetic task's annotated scene names
    assert len(scenes) == len(row["scene_probs"]) == num_scenes(str(out)) and all(isinstance(n, str) and n for n in scenes)
    first_run, first_digest = committed_run(str(out)), summary_digest(str(out))

    # A rerun of a committed run curates again into a new run and replaces it whole: the same rows, not
    # twice as many; the old run is gone, and everything but the commit record lives in the run's folder.
    again = run_preprocess(cfg)
    assert again["videos_resumed"] == 0 and committed_run(str(out)) != first_run
    assert _read_shards(out).num_rows == table.num_rows and summary_digest(str(out)) != first_digest
    assert sorted(p.name for p in out.iterdir()) == ["_committed.json", "runs"]
    assert [p.name for p in (out / "runs").iterdir()] == [committed_run(str(out))]


def test_bad_config_and_missing_inputs_fail_before_work(tmp_path, ray_local):
    with pytest.raises(FileNotFoundError, match=r"x.csv not found \(input.manifest\)"):
        run_preprocess(PreprocessConfig(out=str(tmp_path / "o"), input=InputConfig(manifest=str(tmp_path / "x.csv"))))
    (tmp_path / "m.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    with pytest.raises(FileNotFoundError, match="scenes.json"):
        run_preprocess(PreprocessConfig(out=str(tmp_path / "o"), input=InputConfig(manifest=str(tmp_path / "m.csv")),
                                        labels=ANNOTATIONS))
    with pytest.raises(FileNotFoundError, match="input.root"):
        run_preprocess(PreprocessConfig(out=str(tmp_path / "o"), input=InputConfig(root=str(tmp_path / "no_such_dir"))))
    assert not (tmp_path / "o").exists()
    with pytest.raises(FileNotFoundError, match=r"no curated data in .*run `debias preprocess"):
        shard_files(str(tmp_path / "o"))
    with pytest.raises(SystemExit, match="decode.sampling: must be one of"):
        main([str(tmp_path), "--out", str(tmp_path / "o"), "decode.sampling=random"])


def test_real_clips_folder_of_videos_with_clips_per_video(tmp_path, real_clips, ray_local):
    """`debias preprocess ROOT --out OUT` on ROOT/<class>/<video>: 1:N rows (two clips per video)."""
    meta = list(csv.DictReader(open(real_clips / "MANIFEST.tsv"), delimiter="\t"))
    root = tmp_path / "videos"
    for m in meta:
        (root / m["action_class"]).mkdir(parents=True, exist_ok=True)
        (root / m["action_class"] / m["filename"]).symlink_to(real_clips / m["filename"])
    main([str(root), "--out", str(tmp_path / "out"), *NO_LABELS, "decode.sampling=clips", "decode.clips_per_video=2",
          "decode.num_frames=8", "decode.short_side_px=64", "decode.crop_px=56"])
    summary = read_summary(str(tmp_path / "out"))
    assert summary["videos_ok"] == len(meta) == 18, summary["failures_by_reason"]
    assert summary["rows"] == 36 and summary["mask_source"] == ["none"] and summary["scene_source"] == ["none"]
    frames_decoded = {f"{m['action_class']}/{Path(m['filename']).stem}": int(m["frames_decoded"]) for m in meta}
    rows = _read_shards(tmp_path / "out").to_pylist()
    assert sorted((r["video_id"], r["clip_index"]) for r in rows) == sorted((v, i) for v in frames_decoded for i in (0, 1))
    for row in rows:
        assert len(row["frames"]) == 8 and decode_jpeg(row["frames"][-1]).shape == (56, 56, 3)
        assert np.all(np.diff(row["frame_indices"]) == 1)  # a clip is consecutive frames
        assert 0 <= min(row["frame_indices"]) and max(row["frame_indices"]) < frames_decoded[row["video_id"]]
        assert row["fps"] > 0


def test_sampling_policies_on_real_clips(real_clips):
    meta = {m["filename"]: m for m in csv.DictReader(open(real_clips / "MANIFEST.tsv"), delimiter="\t")}
    for name in list(meta)[:4]:  # frame counts come from decoding, not from (sometimes broken) metadata
        assert len(decode_window(real_clips / name).frames) == int(meta[name]["frames_decoded"]), name
    every = make_decode_fn(DecodeConfig(sampling="paper", num_frames=1))  # 32 px: cheap
    for name, m in meta.items():  # the fast path counts the same, AVI (xvid) and MP4 (H.264) alike
        assert len(every(_row(real_clips / name))[0]["frame_indices"]) == int(m["frames_decoded"]), name
    short = real_clips / "Documentario_Le_Parkour_Londrina_jump_f_cm_np1_ri_bad_6.mp4"  # 40 frames, 1.33 s
    geometry = dict(short_side_px=40, crop_px=32)

    paper = make_decode_fn(DecodeConfig(sampling="paper", **geometry))(_row(short))
    assert len(paper) == 1 and paper[0]["frame_indices"] == list(range(40))  # every frame, native rate

    seed = make_decode_fn(DecodeConfig(sampling="seed", sample_fps=1.0, **geometry))(_row(short))[0]
    assert seed["frame_indices"][:2] == [0, 30] and seed["frame_indices"][2:] == [30] * 14  # 1 fps at 30 fps
    assert seed["padded"] and len(seed["frames"]) == 16

    too_short = make_decode_fn(DecodeConfig(sampling="uniform", num_frames=48, **geometry))(_row(short))[0]
    assert too_short["error_code"] == "too_short" and short.name in too_short["error"]
    assert "40 frames" in too_short["error"] and too_short["error_stage"] == "decode"

    windowed = make_decode_fn(DecodeConfig(num_frames=8, **geometry))(
        {**_row(real_clips / "abseiling_k400.mp4"), "time_start": 2.0, "time_end": 4.0})[0]
    assert windowed["frame_indices"] == [3, 9, 15, 21, 28, 34, 40, 46]  # 50 frames at 25 fps in [2, 4) s


def _ffmpeg_or_skip() -> str:
    ffmpeg = find_ffmpeg("")
    if not ffmpeg:
        pytest.skip("no ffmpeg binary (PATH or imageio-ffmpeg) to write a rotated test video")
    return ffmpeg


def test_rotation_metadata_is_honoured(tmp_path):
    import subprocess

    frames = np.zeros((4, 48, 64, 3), np.uint8)
    frames[:, :12, :16] = 255  # a white top-left corner
    write_mp4(tmp_path / "plain.mp4", frames, fps=8.0)
    subprocess.run([_ffmpeg_or_skip(), "-v", "error", "-y", "-display_rotation", "90", "-i", str(tmp_path / "plain.mp4"),
                    "-c", "copy", str(tmp_path / "rotated.mp4")], check=True)
    plain, rotated = decode_window(tmp_path / "plain.mp4"), decode_window(tmp_path / "rotated.mp4")
    assert rotated.frames.shape[1:3] == (64, 48)  # displayed portrait, as a player shows it
    assert np.abs(rotated.frames[0].astype(int) - np.rot90(plain.frames[0]).astype(int)).mean() < 2
    pick = lambda times: pick_uniform(times, 2)  # noqa: E731
    small = decode_clips(tmp_path / "rotated.mp4", pick, short_side_px=48, crop_px=48)
    reference = decode_clips(tmp_path / "plain.mp4", pick, short_side_px=48, crop_px=48)
    assert np.abs(small.clips[0][0].astype(int) - np.rot90(reference.clips[0][0]).astype(int)).mean() < 4


def test_variable_frame_rate_samples_by_timestamp(tmp_path):
    """Frames at 0-0.9 s every 0.1 s, then one every 0.5 s to 3 s: 1 fps sampling follows the clock."""
    times = [i / 10 for i in range(10)] + [1.0 + i / 2 for i in range(5)]
    with av.open(str(tmp_path / "vfr.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        s.codec_context.time_base = s.time_base = __import__("fractions").Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, np.uint8), format="rgb24")
            frame.pts = int(t * 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    seed = make_decode_fn(DecodeConfig(sampling="seed", sample_fps=1.0, num_frames=4))(_row(tmp_path / "vfr.mp4"))[0]
    assert seed["error"] == "" and seed["frame_indices"] == [0, 10, 12, 14]  # t = 0, 1, 2, 3 s
    assert not seed["padded"]


def test_readme_documents_the_shard_schema():
    readme = (ROOT / "docs" / "schema.md").read_text()  # rendered there by docs/render.py
    assert shard_schema_markdown() in readme


def test_other_pixel_formats_and_odd_sizes_decode_like_the_reference(tmp_path):
    rng = np.random.default_rng(0)
    image = cv2_blur(rng.integers(0, 255, (47, 63, 3), dtype=np.uint8))
    with av.open(str(tmp_path / "odd444.mp4"), "w") as c:  # 4:4:4 chroma, odd width and height
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 63, 47, "yuv444p"
        for _ in range(4):
            for p in s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    got = decode_clips(tmp_path / "odd444.mp4", lambda times: pick_uniform(times, 2), short_side_px=32, crop_px=32)
    assert got.clips[0].shape == (2, 32, 32, 3)
    reference = cv2.resize(decode_window(tmp_path / "odd444.mp4").frames[0], (43, 32), interpolation=cv2.INTER_AREA)
    assert np.abs(got.clips[0][0][:, :, ::-1].astype(int) - reference[:, 5:37].astype(int)).mean() < 12


def cv2_blur(image):
    return cv2.GaussianBlur(image, (9, 9), 3)  # smooth content: resampling differences stay small
