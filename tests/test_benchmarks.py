"""Every benchmark runs, smallest size, so that none rots unseen: each must finish, print its JSON line,
and that JSON must render every README / docs block its full run records (a renamed figure fails here,
not at the next recording). The figures of these runs mean nothing; the recorded ones are in docs/results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REAL_CLIPS, docs_render

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_benchmark(args: list[str], tmp_path: Path, timeout_s: int = 900) -> dict:
    """`python benchmarks/ARGS...` from the repo root; its last JSON line."""
    job = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    lines = [line for line in job.stdout.splitlines() if line.startswith("{")]
    assert lines, f"{args[0]} printed no JSON line:\n{job.stdout[-2000:]}"
    return json.loads(lines[-1])


def test_bench_train_quick(tmp_path):
    figures = run_benchmark(["benchmarks/bench_train.py", "--quick", "--device", "cpu"], tmp_path)
    assert figures["sdn"]["loader_clips_per_s"] > 0 and figures["baseline"]["synthetic_clips_per_s"] > 0
    docs_render().render_recorded_by("bench_train.py --quick --device cpu", figures)


def test_update_scheme_quick(tmp_path):
    """Both schemes train at every seed, the per-seed lists line up, and the chosen one has the higher mean
    (bugs: runs that ignored the scheme or the seed; the per-seed pairing and the choice are checked
    against the figures printed)."""
    figures = run_benchmark(["benchmarks/update_scheme.py", "--quick", "--work", str(tmp_path / "work")], tmp_path)
    per_seed = figures["per_seed"]
    assert len(per_seed["joint"]) == len(per_seed["alternating"]) == 2
    assert figures["alternating_minus_joint"]["differences"] == pytest.approx(
        [a - j for a, j in zip(per_seed["alternating"], per_seed["joint"])], abs=2e-4)
    means = figures["means"]
    assert figures["chosen"] == ("alternating" if means["alternating"]["mean"] > means["joint"]["mean"] else "joint")
    for scheme in ("joint", "alternating"):  # each run trained with its scheme and seed
        for seed in (0, 1):
            config = json.loads((tmp_path / "work" / "runs" / f"{scheme}_seed{seed}" / "config.json").read_text())["config"]
            assert (config["loss"]["update"], config["seed"]) == (scheme, seed)
    docs_render().render_recorded_by("benchmarks/update_scheme.py", figures)


def test_bench_embed_small(tmp_path):
    figures = run_benchmark(["benchmarks/bench_embed.py", "--rows", "8", "--frames", "8", "--size-px", "32",
                             "--out", str(tmp_path / "embed.json")], tmp_path)
    assert json.loads((tmp_path / "embed.json").read_text()) == figures
    docs_render().render_recorded_by("benchmarks/bench_embed.py", figures)


def test_label_quality_small(tmp_path):
    figures = run_benchmark(["benchmarks/label_quality.py", "--per-class", "2", "--out", str(tmp_path / "lq")], tmp_path)
    docs_render().render_recorded_by("benchmarks/label_quality.py", figures)


def test_bench_labels_quick(tmp_path):
    figures = run_benchmark(["benchmarks/bench_labels.py", "--quick", "--device", "cpu", "--seconds", "1",
                             "--min-batches", "2", "--max-batches", "4"], tmp_path)
    docs_render().render_recorded_by("benchmarks/bench_labels.py", figures)


def test_bench_decode_small(tmp_path, real_clips):
    figures = run_benchmark(["benchmarks/bench_decode.py", str(real_clips), "--repeat", "1", "--workers", "1"], tmp_path)
    docs_render().render_recorded_by("benchmarks/bench_decode.py", figures)


def test_bench_scale_quick(tmp_path, real_clips):
    figures = run_benchmark(["benchmarks/bench_scale.py", "--quick", "--work", str(tmp_path / "scale"),
                             "--clips", str(REAL_CLIPS)], tmp_path, timeout_s=1200)
    assert figures["bars_met"]["resume_accounts_for_every_video"]
    docs_render().render_recorded_by("benchmarks/bench_scale.py", figures)


def test_gpu_scripts_parse_and_their_cpu_helpers_load():
    """gpu.sh runs only on a GPU machine (one is lent now and then): at least it parses, and so do the
    Python helpers it calls; bench_storage's --help loads its module (its S3 path runs in test_s3.py)."""
    for script in ("benchmarks/gpu.sh", "benchmarks/gpu_wheels.sh"):
        subprocess.run(["bash", "-n", script], cwd=ROOT, check=True)
    for script in ("benchmarks/gpu_busy.py", "benchmarks/bench_storage.py"):
        subprocess.run([sys.executable, script, "--help"], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
