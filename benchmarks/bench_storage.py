"""Storage benchmark: the quick pipeline with every output on a local S3-compatible server against the same
pipeline on the local disk, side by side in one run (same machine, same load, alternating order).

    python benchmarks/bench_storage.py [--repeat N] [key=value ...]

The S3 server is moto's server mode (`moto[server]`, the test extra) on 127.0.0.1; the jobs reach it
through the standard AWS_* variables, as on a real cluster. Each measurement is a fresh
`python -m ray_jobs.pipeline --config configs/pipeline/quick.yaml` job (Ray start included); overrides
after the options shrink it (the figures say which were given). The last line printed is a JSON object:
per backend the wall times, and `s3_over_local`, the ratio of their medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from debias.cluster import free_port  # noqa: E402

BUCKET = "debias-bench"


def start_s3(log_dir: str) -> tuple[subprocess.Popen, dict[str, str]]:
    """moto's S3 server on a free port of 127.0.0.1, an empty bucket, and the environment that points at it."""
    import boto3

    port = free_port()
    server = str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=open(f"{log_dir}/moto.log", "w"),
                            stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return proc, env


def run_pipeline(out: str, overrides: list[str], env: dict[str, str], cwd: str) -> float:
    t0 = time.perf_counter()
    job = subprocess.run([sys.executable, "-m", "ray_jobs.pipeline", "--config", str(ROOT / "configs/pipeline/quick.yaml"),
                          *overrides, f"out={out}"], cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True)
    if job.returncode != 0:
        sys.exit(f"pipeline failed for out={out}:\n{job.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="pipelines per backend (alternating local, s3)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="pipeline config overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, env = start_s3(tmp)
        try:
            times: dict[str, list[float]] = {"local": [], "s3": []}
            for i in range(args.repeat):
                times["local"].append(run_pipeline(f"{tmp}/local{i}", args.overrides, env, tmp))
                times["s3"].append(run_pipeline(f"s3://{BUCKET}/run{i}", args.overrides, env, tmp))
                print(f"repeat {i + 1}: local {times['local'][-1]:.1f} s, s3 {times['s3'][-1]:.1f} s", flush=True)
        finally:
            proc.terminate()
    median = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"bench": "storage", "wall_s": times, "median_s": median,
                      "s3_over_local": median["s3"] / median["local"], "overrides": args.overrides,
                      "repeat": args.repeat, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                      "load_avg_1m_at_end": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
