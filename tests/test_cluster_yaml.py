"""cluster.yaml against Ray's own schema and config preparation, offline."""

import json
from pathlib import Path

import jsonschema
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_valid_for_the_ray_cluster_launcher():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(cfg, schema)
    prepared = prepare_config(cfg)
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert types[prepared["head_node_type"]]["resources"]["CPU"] == 0
    assert types["gpu_worker"]["resources"]["GPU"] >= 1 and types["cpu_worker"]["resources"].get("GPU", 0) == 0
    assert all(types[t]["max_workers"] >= types[t]["min_workers"] for t in ("cpu_worker", "gpu_worker"))
    # The setup installs this project (and so its pinned dependencies) on every node.
    assert any("pip install" in c and "/home/ubuntu/debias" in c for c in prepared["setup_commands"])
    assert ".git" in prepared["rsync_exclude"]
    # Object storage is the default: the bucket named once, every node allowed to reach it by its role.
    assert (ROOT / "cluster.yaml").read_text().count("s3://debias-REPLACE-ME") == 1
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values())
