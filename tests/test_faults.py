"""Storage faults end a job in one line naming the path, the fault and what to do (debias.faults)."""

import errno
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from ray.exceptions import RayTaskError

from debias.faults import report, storage_fault
from debias.curation.synth import SynthConfig, generate


def test_a_wrapped_full_disk_is_found_with_its_path():
    inner = OSError(errno.ENOSPC, "No space left on device", "/mnt/small/shards/part-3.parquet")
    try:
        try:
            raise inner
        except OSError as e:
            raise RayTaskError("MapWorker(Write)", "worker traceback", e).as_instanceof_cause() from None
    except Exception as wrapped:  # what Ray Data re-raises: no errno of its own, the cause inside
        fault = storage_fault(wrapped)
    assert (fault.fault, fault.path) == ("no space left on device", "/mnt/small/shards/part-3.parquet")
    assert "run the same command again: it resumes" in fault.advice


def test_faults_known_only_by_their_text_and_other_errors():
    # pyarrow's local write error names no path
    text_only = OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert (storage_fault(text_only).fault, storage_fault(text_only).path) == ("no space left on device", "")
    bucket = OSError("When initiating multiple part upload for key 'runs/x' in bucket 'gone': AWS Error "
                     "NO_SUCH_BUCKET during CreateMultipartUpload operation: The specified bucket does not exist")
    assert storage_fault(bucket).path == "gone" and "bucket does not exist" in storage_fault(bucket).fault
    assert storage_fault(PermissionError(errno.EACCES, "Permission denied", "/ro/out")).path == "/ro/out"
    quota = RuntimeError("wrapped")
    quota.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert storage_fault(quota).fault == "disk quota exceeded"
    assert storage_fault(ValueError("bad label")) is None
    assert storage_fault(FileNotFoundError(errno.ENOENT, "No such file", "/x")) is None


def test_the_line_names_the_outputs_when_the_error_names_no_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DEBIAS_LOG_DIR", str(tmp_path / "logs"))
    try:
        raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
    except OSError as e:
        line = report(e, "preprocess", [("out", "/mnt/small/shards")])
    assert line.startswith("preprocess: storage error: out=/mnt/small/shards: no space left on device; free space")
    log = line.rsplit("traceback in ", 1)[1].rstrip(")")
    assert "Traceback" in open(log).read() and os.path.dirname(log) == str(tmp_path / "logs")
    assert report(ValueError("bad"), "preprocess", []) is None


def test_a_job_ending_in_a_storage_fault_prints_one_line(tmp_path):
    """Through the driver's own path: load_job_config installs the handler; any other error keeps its traceback."""
    script = textwrap.dedent(f"""
        import errno, sys
        from debias.curation.synth import SynthConfig
        from ray_jobs.common import job_parser, load_job_config
        cfg = load_job_config(SynthConfig, job_parser("debias synth", "").parse_args(["out={tmp_path}/o"]))
        if sys.argv[1] == "full":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise ValueError("not a storage fault")
    """)
    env = {**os.environ, "DEBIAS_LOG_DIR": str(tmp_path / "logs")}
    full = subprocess.run([sys.executable, "-c", script, "full"], capture_output=True, text=True, env=env, timeout=120)
    assert full.returncode == 1
    assert full.stderr.splitlines() == [
        f"synth: storage error: out={tmp_path}/o: no space left on device; free space there or choose a larger "
        f"volume, then run the same command again: it resumes where it stopped (traceback in "
        f"{full.stderr.split('traceback in ')[1].split(')')[0]})"]
    other = subprocess.run([sys.executable, "-c", script, "other"], capture_output=True, text=True, env=env, timeout=120)
    assert other.returncode == 1 and other.stderr.startswith("Traceback") and "ValueError: not a storage fault" in other.stderr


def test_the_path_comes_from_the_error_not_from_a_traceback_it_carries():
    text = ('ray::MapBatches(finalize)->Write()\n  File "/work/debias/storage.py", line 118, in write_bytes\n'
            "OSError: [Errno 28] No space left on device: '/mnt/small/stats/stats-1.json'")
    assert storage_fault(RuntimeError(text)).path == "/mnt/small/stats/stats-1.json"
    assert storage_fault(RuntimeError(text.rsplit(":", 1)[0])).path == ""


@pytest.fixture
def small_volume(tmp_path):
    """A 160 KiB tmpfs (about half of what the tiny curation below writes); skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({(made.stderr or made.stdout).strip() or 'mount failed'})")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_curation_onto_a_full_disk_ends_in_one_line_and_resumes_after_space_is_freed(tmp_path, small_volume):
    generate(SynthConfig(out=str(tmp_path / "synth"), train_per_class=3, val_per_class=1, ood_val_per_class=1, ood_test_per_class=1,
                         target_train_per_class=0, target_test_per_class=0, frame_size_px=32, num_frames=8))
    out = small_volume / "shards"
    command = [sys.executable, "-m", "ray_jobs.preprocess", "--out", str(out), "decode.num_frames=8",
               f"input.manifest={tmp_path / 'synth' / 'source' / 'manifest.csv'}", "resources.rows_per_shard=4",
               "labels.mask_provider=annotations", "labels.scene_provider=annotations"]
    env = {**os.environ, "DEBIAS_LOG_DIR": str(tmp_path / "logs")}
    full = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    assert full.returncode == 1, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    # the file the write meant, or (where the failing write names none, e.g. in a Ray Data writer) the job's out=
    assert re.fullmatch(rf"preprocess: storage error: (?:{out}/\S+|out={out}): no space left on device; free space there or choose a "
                        r"larger volume, then run the same command again: it resumes where it stopped \(traceback in "
                        rf"{tmp_path / 'logs'}/preprocess-\S+\.log\)", last), last
    assert "Traceback" not in full.stderr and "please open an issue" not in full.stderr
    # Ray Data's progress in this log (no terminal): the totals, not a row per operator
    progress = [line for line in full.stderr.splitlines() if "logging_progress.py" in line]
    assert progress and all(re.search(r"Running Dataset|Total Progress|Active & requested|=====$", line) for line in progress)
    assert "No space left on device" in (tmp_path / "logs").glob("*.log").__next__().read_text()

    subprocess.run(["mount", "-o", "remount,size=8m", str(small_volume)], check=True)  # space freed
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "preprocess: resuming run" in again.stderr
    run_id = json.loads((out / "_committed.json").read_text())["run_id"]
    summary = json.loads((out / "runs" / run_id / "summary.json").read_text())
    assert summary["videos_ok"] == 36 and summary["videos_resumed"] + summary["videos_processed"] == 36  # 6 actions x (3 + 1 + 1 + 1)
