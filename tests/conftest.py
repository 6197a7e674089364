from __future__ import annotations

import os
from pathlib import Path

import pytest

# Ray Train's controller polls its workers every 2 s, so a tiny test run idles up to two polls after its
# last epoch (measured: 4.4 s of a 18 s run). Ray processes started from this one inherit the setting; a
# missed poll is only an error after 10 min, so the faster cadence changes no outcome.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

REAL_CLIPS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_clips"


@pytest.fixture(scope="session")
def real_clips() -> Path:
    if not (REAL_CLIPS / "MANIFEST.tsv").is_file():
        pytest.skip(f"real clips not found at {REAL_CLIPS} (the shared/ folder beside the repo)")
    return REAL_CLIPS


@pytest.fixture(scope="module")
def ray_local():
    """One small local Ray instance per test module (a start costs seconds on 2 cores)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=512 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()
