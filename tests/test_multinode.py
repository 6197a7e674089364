"""Several Ray nodes on one machine: work spreads over nodes, and training survives losing one."""

import json
import threading
import time

import pytest
from ray.util.state import list_actors, list_tasks

from debias.config import load_config
from debias.curation.curate import PreprocessConfig
from debias.curation.synth import SynthConfig, generate
from debias.training.train import PretrainConfig
from debias.curation.preprocess import run_preprocess
from debias.training.pretrain import run_pretrain
from conftest import epoch_lines

pytestmark = pytest.mark.slow  # a Ray cluster of three nodes


@pytest.fixture(scope="module")
def shards(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    generate(SynthConfig(out=str(root / "synth"), train_per_class=3, val_per_class=1, ood_val_per_class=1, ood_test_per_class=1,
                         target_train_per_class=0, target_test_per_class=0, frame_size_px=32, num_frames=8))
    cfg = load_config(PreprocessConfig, None, [f"out={root / 'data'}", "decode.num_frames=8",
                                               "labels.mask_provider=annotations", "labels.scene_provider=annotations",
                                               f"input.manifest={root / 'synth' / 'source' / 'manifest.csv'}"])
    return root, run_preprocess(cfg)


def test_preprocess_work_lands_on_more_than_one_node(cluster, shards):
    _root, summary = shards
    assert summary["videos_ok"] == 6 * 6  # train 3, val, ood_val and ood_test 1 each, per action
    # the decode stage is an actor pool: its actors' calls are tasks named MapWorker(FlatMap(Decoder)).*
    decode_nodes = {t.node_id for t in list_tasks(limit=10000) if t.name.startswith("MapWorker(FlatMap(Decoder))")}
    worker_nodes = {n.node_id for n in cluster.worker_nodes}
    assert len(decode_nodes & worker_nodes) >= 2, decode_nodes


def test_training_survives_losing_its_worker_node(cluster, shards):
    """The node of the run's Train worker is lost: the worker group restarts (on the node that replaces it)
    from the last registered checkpoint. decode_on=device: the worker renders its clips itself (ClipCollate,
    here on CPU), as on GPUs; the alternating update (two optimizer steps a batch) resumes too."""
    root, _summary = shards
    cfg = load_config(PretrainConfig, None, [
        f"shards={root / 'data'}", f"out={root / 'runs'}", "name=fault", "optim.epochs=8", "optim.batch_size=8",
        "model.width=4", "clip.clip_len=8", "scaling.cpus_per_worker=1", "scaling.max_failures=2",
        "loss.update=alternating", "loader.decode_on=device"])
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run_pretrain(cfg)))
    thread.start()
    run_dir = root / "runs" / "fault"
    deadline = time.time() + 300
    # Wait until the controller has registered a checkpoint (reports reach it asynchronously: a
    # checkpoint written to storage but not yet registered is not one a restart can resume from).
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    while not (snapshot.is_file() and "checkpoint_dir_name" in snapshot.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    registered = json.loads(snapshot.read_text())["checkpoint_results"]
    assert registered, "no checkpoint registered"
    worker = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])[0]
    victim = next(n for n in cluster.worker_nodes if n.node_id == worker.node_id)
    resumed_after = min(r["metrics"]["epoch"] for r in registered)
    written = epoch_lines(run_dir)  # each line carries its epoch's timings: an epoch run again has another
    assert set(range(resumed_after + 1)) <= set(written), written
    cluster.remove_node(victim)
    cluster.add_node(num_cpus=2)  # the autoscaler's replacement
    thread.join(timeout=600)
    assert not thread.is_alive()
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker")])
    assert any(w.node_id != victim.node_id for w in workers), "the worker group never restarted elsewhere"
    epochs = [m["epoch"] for m in result["history"]]
    assert epochs == list(range(8))
    # Resumed from the registered checkpoint, not from scratch: no epoch up to it was run twice.
    final = epoch_lines(run_dir)
    assert all(final[e] == written[e] for e in range(resumed_after + 1)), (resumed_after, written, final)
    # Checkpoints live in the configured storage path.
    assert any(p.name.startswith("checkpoint_") for p in run_dir.iterdir())
