"""The `demo` job: a fresh synthetic benchmark, curated, the four ablation variants trained once per
seed (several runs at once), each measured, the statistics over seeds (debias/experiments/ablation.py)
and the report; `run_demo` and the summary it owns (`DemoResult`, `read_demo`). The driver is
ray_jobs/demo.py."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import ray
import torch

from debias import storage
from debias.evaluation.bias import MEASURES, BiasConfig, BiasData, dataset_bias, load_bias_data, measure_bias
from debias.evaluation.counterfactual import GateConfig
from debias.evaluation.field_bias import FIELD_MEASURES, FieldMeasuresConfig, field_bias_measures
from debias.experiments.ablation import (TRAINER_FIGURES, VARIANTS, ablation_table, aggregate, claim, claim_text,
                                         class_drops_over_seeds, fmt, mean_histories, paired_ablation, per_model, separation, variants)
from debias.cluster import K, bounded, init_ray
from debias.config import PathStr, check, from_dict, to_dict
from debias.curation.curate import DecodeConfig, InputConfig, PreprocessConfig
from debias.curation.labels.config import LabelsConfig
from debias.curation.preprocess import run_preprocess
from debias.training.pretrain import run_pretrain
from debias.report import plot_curves, plot_seeds, provenance, table
from debias.training.runs import load_model
from debias.curation.shards import num_scenes, read_classes
from debias.experiments.sweep import concurrent_runs, run_task_cpus
from debias.curation.synth import SynthConfig, run_synth
from debias.training.clips import ClipConfig
from debias.training.train import LoaderConfig, OptimConfig, PretrainConfig, ScalingConfig

MEASURES = {**MEASURES, **FIELD_MEASURES}  # the project's scene-bias measures and the field's (SCUBA, HAT)


@dataclass
class DemoConfig:
    """The demo's own settings. Paths inside `synth` and `pretrain` (out, shards, name) and
    `pretrain.seed` are set by the demo; everything else is used as given."""

    out: PathStr = "out/demo"
    synth: SynthConfig = field(default_factory=SynthConfig)
    # 8 of each video's 16 frames, spread over it (every second frame): each action's whole movement at
    # half the frame rate, for half the training cost of all 16 (the demo's time: docs/benchmarks.md).
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig(num_frames=8))
    # 8 epochs, evaluated every 2nd (the cosine schedule anneals over them; curves.png). Ray Train's
    # local mode (num_workers 0): each run trains in the task that fits it, since a worker group's
    # start-up (a dozen fresh actor processes, each importing torch) costs more than a tiny model's
    # training. Runs at once rather than threads a run (debias.experiments.sweep.concurrent_runs): tiny
    # convolutions use the cores better so. Where the time goes: docs/benchmarks.md.
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(
        eval_every_epochs=2, optim=OptimConfig(epochs=8), clip=ClipConfig(clip_len=8),
        loader=LoaderConfig(cache_eval_clips=True), scaling=ScalingConfig(num_workers=0, cpus_per_worker=0.5)))
    bias: BiasConfig = field(default_factory=lambda: BiasConfig(clip_len=8))
    # The field's measures (SCUBA, SCUFO, HAT; debias/evaluation/field_bias.py) on `val`. The synthetic
    # figure covers a few percent of the frame, below the Kinetics SCUBA rule's 10 % and HAT's 5 % swap
    # band, which would drop every clip: the gates keep figures of 1 % and 0.5 %.
    field_bias: FieldMeasuresConfig = field(default_factory=lambda: FieldMeasuresConfig(
        gates=GateConfig(scuba_min_coverage=0.01, swap_min_coverage=0.005)))
    # Every variant is trained once per seed (pretrain.seed: initial weights, data order, the eval
    # clips); the synthetic benchmark stays the same (synth.seed). One run cannot tell a gap from noise.
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_parallel: int = 0  # training runs at once; 0: as many as the CPUs hold (debias.experiments.sweep.concurrent_runs)
    run_cpus: float = 0.25  # each run's task, beside the worker's CPUs it holds in local mode (it trains there)
    min_ood_gain: float = 0.10  # the claim, on the means over seeds: SDN's ood_acc beats the baseline's by this
    max_val_drop: float = 0.05  # ... while its val_acc is at most this much lower
    job_set_paths = ("synth.out", "pretrain.shards", "pretrain.out")  # not a field: set from out (debias.jobenv)

    def __post_init__(self) -> None:
        check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds",
              f"needs at least one seed, each once, got {self.seeds}")
        check(self.max_parallel >= 0, "max_parallel", "must be >= 0 (0 = auto)")


def run_configs(cfg: DemoConfig, shards: str, out: str) -> dict[tuple[str, int], PretrainConfig]:
    """Every (variant, seed) run, the runs with the mask loss (twice the clips) first: started first,
    they do not end alone on the machine after the short ones."""
    runs = {}
    weights = variants(cfg.pretrain.loss.lambda_scene, cfg.pretrain.loss.lambda_mask)
    for name, (ls, lm) in sorted(weights.items(), key=lambda v: -v[1][1]):
        for seed in cfg.seeds:
            loss = dataclasses.replace(cfg.pretrain.loss, lambda_scene=ls, lambda_mask=lm)
            runs[name, seed] = dataclasses.replace(cfg.pretrain, shards=shards, out=storage.join(out, "runs"),
                                                   name=f"{name}_seed{seed}", seed=seed, loss=loss)
    return runs


@ray.remote
def train(config: dict) -> dict:
    """One training run (a TorchTrainer launched from this task): its run folder, history and wall time."""
    t0 = time.perf_counter()
    result = run_pretrain(from_dict(PretrainConfig, config))
    return {"run": result["run"], "history": result["history"], "final": result["final"], "per_class": result["per_class"],
            "wall_s": time.perf_counter() - t0}


def curate_benchmark(cfg: DemoConfig, out: str, timings: dict[str, float]) -> tuple[dict, str]:
    """The demo's benchmark in OUT/synth, curated into OUT/data (ground-truth masks and scenes): the
    preprocess summary and the shards folder; each step's seconds into `timings`."""
    t = time.perf_counter()
    run_synth(dataclasses.replace(cfg.synth, out=storage.join(out, "synth")))
    timings["synth_s"] = time.perf_counter() - t
    t = time.perf_counter()
    # The curated row order is the training batches' order: kept in input order (preserve_order), a
    # rerun of the demo curates the same shards and so reproduces its numbers.
    pre = PreprocessConfig(out=storage.join(out, "data"), seed=cfg.synth.seed, decode=cfg.decode, preserve_order=True,
                           input=InputConfig(manifest=storage.join(out, "synth", "source", "manifest.csv")),
                           labels=LabelsConfig(mask_provider="annotations", scene_provider="annotations"))
    curated = run_preprocess(pre)
    timings["preprocess_s"] = time.perf_counter() - t
    return curated, pre.out


def train_runs(cfg: DemoConfig, configs: dict[K, PretrainConfig], what: str) -> Iterator[tuple[K, dict]]:
    """Every run of `configs` on the local Ray (`train`, several at once: cfg.max_parallel or as many as
    the CPUs hold), yielding (key, result) as each ends."""
    init_ray()
    cluster = ray.cluster_resources()
    parallel = cfg.max_parallel or concurrent_runs(cfg.pretrain, cfg.run_cpus, cluster)
    print(f"demo: {len(configs)} training runs ({what}), {parallel} at a time on {cluster.get('CPU', 0):g} CPUs")
    launch = {key: (lambda c=c: train.options(num_cpus=run_task_cpus(cfg.pretrain, cfg.run_cpus)).remote(to_dict(c)))
              for key, c in configs.items()}
    yield from bounded(launch, parallel)


def run_demo(cfg: DemoConfig) -> DemoResult:
    out = storage.absolute(cfg.out)
    storage.delete(out)  # a demo is always a fresh, complete run
    started = provenance()  # the commit, machine and load as the demo starts, not as it ends
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    curated, shards = curate_benchmark(cfg, out, timings)

    t = time.perf_counter()
    configs = run_configs(cfg, shards, out)
    num_actions, scenes = len(read_classes(shards)), num_scenes(shards)
    # This process only waits on the runs: it measures each finished model meanwhile, on one thread.
    torch.set_num_threads(1)
    results: dict = {}
    bias_data: BiasData | None = None
    bias_s = 0.0
    for key, result in train_runs(cfg, configs, f"{len(VARIANTS)} variants x seeds {cfg.seeds}"):
        tb = time.perf_counter()
        bias_data = bias_data or load_bias_data(shards, cfg.bias)
        model, _ = load_model(result["run"])
        result["bias"] = measure_bias(model, shards, num_actions, scenes, cfg.bias, bias_data)
        clip = configs[key].clip
        result["bias"] |= field_bias_measures(model, shards, clip.clip_len, clip.crop_px, cfg.field_bias)
        bias_s += time.perf_counter() - tb
        results[key] = result
        print(f"demo: {configs[key].name} done ({len(results)}/{len(configs)})", flush=True)
    timings["train_and_measure_s"] = time.perf_counter() - t
    timings["measure_in_driver_s"] = bias_s
    # Where the runs' time went, summed over runs: their epochs' training and evaluation, and the whole
    # run (the rest is each run's Ray Train start-up, its data pipelines' first start and its end).
    timings["runs_wall_s"] = sum(r["wall_s"] for r in results.values())
    timings["runs_train_s"] = sum(m["train_time_s"] for r in results.values() for m in r["history"])
    timings["runs_eval_s"] = sum(m["eval_time_s"] for r in results.values() for m in r["history"])
    timings["total_s"] = time.perf_counter() - t0
    return write_report(cfg, out, started, curated, results, dataset_bias(bias_data, num_actions), num_actions,
                        scenes, timings)


@dataclass
class DemoResult:
    """A demo's summary.json: where it was measured, one entry per variant (each figure's mean, `_std` and
    `_values` over seeds, the variant's weights and seeds), the claim, which measures separate the
    variants, the data's own bias, per-class drops, every run's row, the data, timings and the config.
    On disk the provenance and the variants' entries sit at the top level (the README renders from it)."""

    provenance: dict
    variants: dict[str, dict]
    claim: dict  # SDN against the baseline on paired intervals (ablation.claim)
    ablation: list[dict]  # every pair of variants the ablation compares (ablation.paired_ablation)
    splits: dict  # where the claims are read and where the weights were chosen
    separation: dict
    dataset_bias: dict
    class_drops: list[dict]
    runs: dict[str, dict]
    data: dict
    timings_s: dict[str, float]
    config: dict


def write_demo(out: str, result: DemoResult) -> str:
    path = storage.join(out, "summary.json")
    fields = {k: v for k, v in dataclasses.asdict(result).items() if k not in ("provenance", "variants")}
    storage.write_json(path, {**result.provenance, **result.variants, **fields})
    return path


def read_demo(path: str) -> DemoResult:
    """The demo at DIR (its folder, or its summary.json); a file that lacks a part names it."""
    path = path if path.endswith(".json") else storage.join(path, "summary.json")
    data = storage.read_json(path)
    parts = [f.name for f in dataclasses.fields(DemoResult) if f.name not in ("provenance", "variants")]
    missing = [k for k in [*parts, *VARIANTS, "date", "commit", "machine", "command"] if k not in data]
    if missing:
        raise ValueError(f"{path}: not a demo summary (missing {missing}); was it written by this version of debias?")
    return DemoResult(provenance={k: data[k] for k in ("date", "commit", "worktree_clean", "machine", "command") if k in data},
                      variants={v: data[v] for v in VARIANTS}, **{k: data[k] for k in parts})


def summarize(cfg: DemoConfig, started: dict, curated: dict, results: dict, data_bias: dict,
              timings: dict) -> DemoResult:
    """The ablation's statistics over the finished runs (debias/experiments/ablation.py); `started`: the
    provenance taken as the demo started (debias.report.provenance)."""
    rows = per_model(results, variants(cfg.pretrain.loss.lambda_scene, cfg.pretrain.loss.lambda_mask))
    means = aggregate(rows, [*TRAINER_FIGURES, *MEASURES])
    return DemoResult(
        provenance=started, variants=means,
        claim=claim(rows, "ood_acc", "val_acc", cfg.min_ood_gain, cfg.max_val_drop),
        ablation=paired_ablation(rows, "ood_acc", cfg.min_ood_gain),
        splits={"reported_on": "ood_test", "weights_chosen_on": "ood_val (a sweep on it); the last epoch's model"},
        separation=separation(means, MEASURES), dataset_bias=data_bias,
        class_drops=class_drops_over_seeds(results, ("baseline", "sdn")), runs=rows,
        data={k: curated[k] for k in ("videos_ok", "videos_failed", "ok_by_split")},
        timings_s={k: round(v, 1) for k, v in timings.items()}, config=to_dict(cfg))


def report_markdown(cfg: DemoConfig, result: DemoResult, num_actions: int, scenes: int) -> str:
    """report.md: the ablation table, the claim, the bias measures, the separation table, class drops."""
    means, verdict, drops, n = result.variants, result.claim, result.class_drops, len(cfg.seeds)
    main_rows = [{"variant": v, **{k: fmt(means[v], k) for k in TRAINER_FIGURES}} for v in VARIANTS]
    bias_rows = [{"variant": v, **{k: fmt(means[v], k) for k in MEASURES}} for v in VARIANTS]
    apart_rows = [{"measure": k, "order (most scene-reliant first)": " > ".join(a["order"]),
                   "baseline vs SDN: gap / spread": f"{a['baseline_vs_sdn']['gap']:.3f} / {a['baseline_vs_sdn']['spread']:.3f}",
                   "separates baseline from SDN": "yes" if a["baseline_vs_sdn"]["separated"]
                   and a["baseline_vs_sdn"]["baseline_more_reliant"] else "no",
                   "neighbours apart": f"{sum(p['separated'] for p in a['neighbours'])} of 3"}
                  for k, a in result.separation.items()]
    data_bias = result.dataset_bias
    first_run = result.runs[next(iter(result.runs))]
    return "\n".join([
        "# debias demo: scene-debiased training on the synthetic scene-bias benchmark", "",
        f"{result.provenance['date']}, commit {result.provenance['commit']}; {result.provenance['machine']}.", "",
        f"Benchmark: bias={cfg.synth.bias} (share of train/val videos shown in their action's home scene); "
        f"`ood` draws scenes independently of the action. Videos: {result.data['ok_by_split']}. Each variant "
        f"trained with seeds {cfg.seeds}: mean ± standard deviation over the {n} seeds.", "",
        table(main_rows, ["variant", *TRAINER_FIGURES]), "",
        f"Claim: {claim_text(verdict)}.", "",
        "Every pair of variants, per-seed differences of ood_test accuracy (95 % intervals; the verdict on the "
        "paired t interval against the claim's gain):", "",
        ablation_table(result.ablation), "",
        "![val and ood accuracy and the bias measures per variant: mean, std and every seed](bias.png)", "",
        "## Scene-bias measures", "",
        table(bias_rows, ["variant", *MEASURES]), "",
        f"`scene_probe_acc`: a fresh linear probe reading the scene from the frozen features on "
        f"`{cfg.bias.scene_split}` (chance {1 / scenes:.3f}). `scene_mdl_bits`: the online codelength of those "
        f"scene labels given the features (Voita & Titov, 2020; uniform code "
        f"{first_run['scene_mdl_uniform_bits']:.1f} bits; compression = uniform / codelength). "
        f"`masked_action_acc`: the model's own action accuracy on `{cfg.bias.test_split}` clips with the people "
        f"removed, `masked_action_prob` the mean probability it gives the true action there (chance "
        f"{1 / num_actions:.3f} for both). `counterfactual_*`: the people pasted onto the background of "
        f"another action's clip; `follows_background` is the share predicted as that clip's action. "
        f"`representation_bias`: log(accuracy / chance) of a linear probe reading the action from the features "
        f"of scene-only clips (fitted on `{cfg.bias.fit_split}`). The field's protocols on "
        f"`{cfg.field_bias.split}` (docs/bias-eval.md): `scuba_top1` the people on a static background, "
        f"`contrasted_acc` right on it and wrong on its still copy (Li et al., ICCV 2023); "
        f"`background_only_top1`, `human_only_top1` and `action_swap_background_acc`, the people on another "
        f"action's moving background predicted as that action (Chung et al., NeurIPS 2022); each run's row "
        f"in summary.json holds their bootstrap intervals over videos (`_low`, `_high`).", "",
        f"The data's own scene bias (the same for every model): the action guessed from the true scene label "
        f"alone is right for {data_bias['scene_label_action_acc']:.3f} of `{cfg.bias.test_split}` "
        f"(log(acc / chance) = {data_bias['scene_label_bias']:.3f}); a model's representation bias reaches it "
        f"as soon as its features tell the scenes apart.", "",
        "Which measures separate the variants (gap between two variants' means against the sum of their "
        "standard deviations over seeds):", "",
        table(apart_rows, list(apart_rows[0])), "",
        "## Which actions lean on the scene", "",
        "Per action, the accuracy drop from `val` (scenes as in training) to `ood` (scenes shuffled), mean "
        "over seeds (each run's per_class.json and confusion_SPLIT.png hold the details):", "",
        table(drops, list(drops[0])) if drops else "(no per-class figures)", "",
        "![training curves, mean over seeds](curves.png)", "",
        "Timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in result.timings_s.items()), "",
    ])


def write_report(cfg: DemoConfig, out: str, started: dict, curated: dict, results: dict, data_bias: dict,
                 num_actions: int, scenes: int, timings: dict) -> DemoResult:
    """summary.json, report.md, bias.png and curves.png; the tables and the claim on the console."""
    result = summarize(cfg, started, curated, results, data_bias, timings)
    write_demo(out, result)
    plot_seeds(result.runs, "variant", list(VARIANTS), ["val_acc", "ood_acc", *MEASURES], storage.join(out, "bias.png"),
               chance={"ood_acc": 1 / num_actions, "val_acc": 1 / num_actions, "masked_action_acc": 1 / num_actions,
                       "masked_action_prob": 1 / num_actions, "scene_probe_acc": 1 / scenes})
    plot_curves(mean_histories(results), ["train_acc", "val_acc", "ood_val_acc", "ood_test_acc", "val_masked_entropy"],
                storage.join(out, "curves.png"))
    storage.write_text(storage.join(out, "report.md"), report_markdown(cfg, result, num_actions, scenes))
    means, verdict = result.variants, result.claim
    print("\n" + table([{"variant": v, **{k: fmt(means[v], k) for k in TRAINER_FIGURES}} for v in VARIANTS],
                       ["variant", *TRAINER_FIGURES]))
    print("\n" + table([{"variant": v, **{k: fmt(means[v], k) for k in MEASURES}} for v in VARIANTS],
                       ["variant", *MEASURES]))
    print(f"\nclaim: {claim_text(verdict)}")
    print(f"summary: {storage.join(out, 'summary.json')}  report: {storage.join(out, 'report.md')}  "
          f"plots: {storage.join(out, 'bias.png')}, {storage.join(out, 'curves.png')}  ({timings['total_s']:.0f} s)")
    return result
