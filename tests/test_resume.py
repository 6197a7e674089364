"""Resumable, committed curation: a preprocess driver SIGKILLed mid-run and started again continues
where it was; readers only ever see committed runs; a run of other rows starts afresh."""

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from debias import storage

from debias.curation import shards
from debias.config import load_config
from debias.curation.curate import PreprocessConfig, row_affecting_config
from debias.curation.sources import read_source
from debias.curation.synth import SynthConfig, generate
from debias.curation.preprocess import run_preprocess

pytestmark = pytest.mark.slow  # preprocess jobs killed and resumed

ROOT = Path(__file__).resolve().parents[1]
# Two clips a video, so that a video is two rows which a kill may split between a written file and a lost
# one; two rows a file, so that files are written (and a kill lands) while most videos are still to do.
JOB = ["labels.mask_provider=annotations", "labels.scene_provider=annotations", "decode.sampling=clips",
       "decode.clips_per_video=2", "decode.num_frames=4", "resources.rows_per_shard=2", "resources.label_batch_size=2"]


def _complete_files(out: Path) -> list[str]:
    """Staged shard files that can be read whole (a file being written has no footer yet)."""
    found = []
    for path in storage.find_files(str(out / "runs"), ".parquet"):
        if "/shards/" in path:
            try:
                shards.read_parquet(path, ["video_id"])
                found.append(path)
            except (OSError, pa.ArrowInvalid):
                pass
    return found


def _kill_mid_run(manifest: Path, out: Path, ray_address: str, files_before_kill: int) -> str:
    """`python -m ray_jobs.preprocess` as a job of the test's Ray, SIGKILLed (its whole process group)
    once it has written `files_before_kill` shard files. Returns its log."""
    log = out.parent / f"{out.name}-killed.log"
    with open(log, "w") as sink:
        driver = subprocess.Popen([sys.executable, "-m", "ray_jobs.preprocess", f"input.manifest={manifest}",
                                   f"out={out}", *JOB], cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                  env={**os.environ, "RAY_ADDRESS": ray_address}, start_new_session=True)
        try:
            deadline = time.time() + 300  # minutes only on a machine loaded many times over
            while len(_complete_files(out)) < files_before_kill:
                assert driver.poll() is None, f"the driver ended before it was killed:\n{log.read_text()[-3000:]}"
                assert time.time() < deadline, f"not {files_before_kill} shard files after 300 s:\n{log.read_text()[-3000:]}"
                time.sleep(0.05)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    time.sleep(2)  # Ray kills the dead driver's workers; a write they were finishing may still land
    return log.read_text()


def test_killed_run_resumes_without_duplicates_or_losses(tmp_path, ray_local):
    generate(SynthConfig(out=str(tmp_path / "synth"), train_per_class=1, val_per_class=1, ood_val_per_class=0, ood_test_per_class=0,
                         target_train_per_class=0, target_test_per_class=0, num_frames=8))
    manifest = tmp_path / "synth" / "source" / "manifest.csv"
    out = tmp_path / "out"
    address = ray_local.get_runtime_context().gcs_address

    log = _kill_mid_run(manifest, out, address, files_before_kill=3)
    assert "starts afresh" in log
    with pytest.raises(FileNotFoundError, match="no committed run"):  # nothing committed: readers see nothing
        shards.shard_files(str(out))

    # The videos the killed attempt wrote whole: their files are made undecodable, so that the resumed run
    # can only hold them by taking them over, never by decoding them again.
    staged = pa.concat_tables([shards.read_parquet(f, ["video_id", "source_path"]) for f in _complete_files(out)])
    written = {v for v, n in Counter(staged.column("video_id").to_pylist()).items() if n == 2}
    paths = dict(zip(staged.column("video_id").to_pylist(), staged.column("source_path").to_pylist()))
    assert written, "the kill came before any video was written whole"
    for video_id in written:
        Path(paths[video_id]).write_bytes(b"no longer a video")

    # Other rows (an input list of two of those videos) start afresh and are committed; the killed run stays.
    small = manifest.parent / "two.csv"  # beside the videos and annotations it names
    lines = manifest.read_text().splitlines()
    small.write_text("\n".join([lines[0]] + [line for line in lines[1:] if any(Path(paths[v]).stem in line
                                                                                 for v in sorted(written)[:2])]) + "\n")
    other = run_preprocess(load_config(PreprocessConfig, None, [f"input.manifest={small}", f"out={out}", *JOB]))
    assert (other["videos_in"], other["videos_resumed"], other["videos_ok"]) == (2, 0, 0)  # decoded again: broken
    assert set(other["failures_by_reason"]) == {"undecodable"}
    assert shards.read_summary(str(out))["run_id"] == other["run_id"]
    assert len(storage.list_dir(str(out / "runs"))) == 2

    cfg = load_config(PreprocessConfig, None, [f"input.manifest={manifest}", f"out={out}", *JOB])
    summary = run_preprocess(cfg)
    n_videos = len(lines) - 1
    assert summary["videos_resumed"] >= len(written) and summary["videos_resumed"] + summary["videos_processed"] == n_videos
    assert (summary["videos_in"], summary["videos_ok"], summary["videos_failed"]) == (n_videos, n_videos, 0)
    rows = pa.concat_tables([shards.read_parquet(f, ["video_id", "clip_index", "frames"]) for f in shards.shard_files(str(out))])
    keys = list(zip(rows.column("video_id").to_pylist(), rows.column("clip_index").to_pylist()))
    assert len(keys) == len(set(keys)) == 2 * n_videos  # no duplicate, no loss: every video's two clips
    assert {v for v, _ in keys} == {r["video_id"] for r in read_source(cfg.input)[0]} >= written
    assert all(len(f) == 4 for f in rows.column("frames").to_pylist())
    # Only the committed run is left (the other rows' run was replaced), with no staging parts in it.
    assert storage.list_dir(str(out / "runs")) == [summary["run_id"]]
    assert not (out / "runs" / summary["run_id"] / "errors").exists()


def test_the_row_digest_follows_what_decides_the_rows():
    def digest(*overrides: str) -> str:
        cfg = load_config(PreprocessConfig, None, list(overrides))
        return shards.row_digest(row_affecting_config(cfg, "annotations", "annotations"), [{"video_id": "a"}], ["x"])

    base = digest()
    for change in ("decode.sampling=clips", "decode.num_frames=8", "decode.short_side_px=40", "labels.scene_hard=vote",
                   "input.root=elsewhere", "seed=1"):
        assert digest(change) != base, change
    for same in ("out=elsewhere", "resources.rows_per_shard=7", "resources.label_actors=2", "decode.threads=2"):
        assert digest(same) == base, same
    cfg = load_config(PreprocessConfig, None, [])
    assert shards.row_digest(row_affecting_config(cfg, "motion", "clusters"), [{"video_id": "a"}], ["x"]) != base
    assert shards.row_digest(row_affecting_config(cfg, "annotations", "annotations"), [{"video_id": "b"}], ["x"]) != base


def _rows(*keys: tuple[str, int]) -> pa.Table:
    """Shard rows with only their keys filled (what a resume looks at)."""
    empty = {f.name: pa.array([[] if pa.types.is_list(f.type) else f.type.to_pandas_dtype()()] * len(keys), f.type)
             for f in shards.SHARD_SCHEMA if f.name not in ("video_id", "clip_index", "label", "split", "source_path",
                                                            "mask_source", "scene_source")}
    strings = {name: pa.array([""] * len(keys)) for name in ("label", "split", "source_path", "mask_source", "scene_source")}
    columns = {"video_id": pa.array([k[0] for k in keys]), "clip_index": pa.array([k[1] for k in keys], pa.int32()),
               **strings, **empty}
    return pa.table({f.name: columns[f.name].cast(f.type) for f in shards.SHARD_SCHEMA}, schema=shards.SHARD_SCHEMA)


def test_resume_keeps_whole_videos_and_redoes_the_rest(tmp_path):
    """What a killed attempt leaves, file by file: whole videos are taken over, a video with one of its two
    clips written is cut out and curated again, a file cut short is deleted, a download failure is retried."""
    out = str(tmp_path / "out")
    first, _ = shards.start_attempt(out, "d" * 64, None, rows_per_video=2)
    assert shards.find_unfinished_run(out, "d" * 64) == first.run_id and shards.find_unfinished_run(out, "e" * 64) is None
    part = storage.join(first.folder("shards"), "a.parquet")
    shards.write_parquet(part, _rows(("whole", 0), ("whole", 1), ("half", 0)))
    storage.write_bytes(storage.join(first.folder("shards"), "b.parquet"), b"PAR1 cut short by the kill")
    errors = pa.table({"video_id": ["broken", "gone", "masked"], "clip_index": [0, 0, 1], "source_path": ["", "", ""],
                       "error_stage": ["decode", "download", "masks"], "error_code": ["undecodable", "timeout", "x"],
                       "error": ["", "", ""]}, schema=shards.ERROR_SCHEMA)
    shards.write_parquet(storage.join(first.folder("errors"), "e.parquet"), errors)
    shards.write_parquet(storage.join(first.folder("shards"), "c.parquet"), _rows(("masked", 0)))

    attempt, resumed = shards.start_attempt(out, "d" * 64, first.run_id, rows_per_video=2)
    assert attempt.run_id == first.run_id and attempt.attempt_id != first.attempt_id
    assert resumed.video_ids == {"whole", "broken", "masked"}  # "half" and "gone" are curated again
    assert not storage.exists(storage.join(first.folder("shards"), "b.parquet"))
    kept = pa.concat_tables([shards.read_parquet(f, ["video_id", "clip_index"]) for f in resumed.shard_files])
    assert sorted(zip(*kept.to_pydict().values())) == [("masked", 0), ("whole", 0), ("whole", 1)]
    assert pa.concat_tables([shards.read_parquet(f) for f in resumed.error_files]).column("video_id").to_pylist() == [
        "broken", "masked"]
    with pytest.raises(FileNotFoundError, match="no committed run"):
        shards.shard_files(out)  # staged, never committed

    shards.commit(attempt, resumed, errors.slice(0, 1), ["a", "b"], ["s"], {"videos_in": 4})
    assert shards.shard_files(out) == sorted(resumed.shard_files)
    assert (shards.read_classes(out), shards.num_scenes(out), shards.read_summary(out)) == (["a", "b"], 1, {"videos_in": 4})
    assert shards.read_errors(out).num_rows == 1 and len(shards.summary_digest(out)) == 64
    assert shards.find_unfinished_run(out, "d" * 64) is None  # committed: a rerun starts a new run


def test_a_training_run_says_where_it_resumes(tmp_path):
    from debias.training.pretrain import log_resume
    from debias.training.runs import STATE_FILE, checkpoint_name
    from debias.training.train import PretrainConfig

    cfg = PretrainConfig()
    cfg.optim.epochs = 6
    run = tmp_path / "sdn"
    messages = []
    handler = logging.Handler()  # its own handler: caplog's sees nothing once debias.cluster stops propagation
    handler.emit = lambda record: messages.append(record.getMessage())
    pretrain_log = logging.getLogger("debias.training.pretrain")
    level = pretrain_log.level
    pretrain_log.addHandler(handler)
    pretrain_log.setLevel("INFO")
    try:
        log_resume(cfg, str(run))
        for epoch in (0, 2):  # two kept checkpoints: the latest decides
            (run / checkpoint_name(epoch)).mkdir(parents=True)
            (run / checkpoint_name(epoch) / STATE_FILE).write_bytes(b"")
        (run / checkpoint_name(3)).mkdir()  # cut short before its state was written: not one
        log_resume(cfg, str(run))
        cfg.optim.epochs = 3
        log_resume(cfg, str(run))
    finally:
        pretrain_log.removeHandler(handler)
        pretrain_log.setLevel(level)
    assert messages == [f"pretrain: starting {run} (epoch 1 of 6)",
                               f"pretrain: resuming {run} from epoch 4 of 6 (its checkpoint checkpoint_epoch_0002)",
                               f"pretrain: {run} already holds all 3 epochs (checkpoint_epoch_0002): nothing left to train"]
