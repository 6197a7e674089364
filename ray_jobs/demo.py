"""Demo: the whole method, end to end, on a freshly generated synthetic scene-bias benchmark.

    python -m ray_jobs.demo [--out DIR] [--config FILE] [key=value ...]

synth -> preprocess (Ray Data) -> pretrain (Ray Train): baseline, scene loss only, mask loss only and
both (SDN), each once per seed in `seeds`, several runs at once as Ray tasks -> per model: `val` (scenes
as in training) and `ood` (scenes shuffled) accuracy and the scene-bias measures (debias/bias.py) ->
DIR/summary.json, DIR/report.md, DIR/bias.png (the measures per variant, mean and every seed) and
DIR/curves.png (the training curves, mean over seeds).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field

import ray
import torch

from debias import storage
from debias.ablation import ablation, ablation_table
from debias.ablation import claim as interval_claim
from debias.bias import BiasConfig, BiasData, dataset_bias, load_bias_data, measure_bias
from debias.cluster import init_ray
from debias.config import check, from_dict, to_dict
from debias.curate import DecodeConfig, InputConfig, PreprocessConfig
from debias.labels import LabelsConfig
from debias.pretrain import run_pretrain
from debias.report import plot_curves, plot_seeds, provenance, table
from debias.runs import load_model
from debias.shards import num_scenes, read_classes
from debias.sweep import concurrent_runs, run_task_cpus
from debias.synth import SynthConfig
from debias.train import OptimConfig, PretrainConfig, ScalingConfig
from ray_jobs.common import job_parser, load_job_config
from ray_jobs.preprocess import run_preprocess
from ray_jobs.synth import run_synth

VARIANTS = ("baseline", "scene_only", "mask_only", "sdn")
# Per model: the trainer's figures and the bias measures the report aggregates over seeds, with the
# direction in which a model relies more on the scene (+1: higher = more scene-reliant).
TRAINER_FIGURES = ("val_acc", "ood_acc", "ood_scene_head_acc", "val_masked_entropy")
BIAS_MEASURES = {"scene_probe_acc": +1, "scene_mdl_bits": -1, "masked_action_acc": +1, "masked_action_prob": +1,
                 "counterfactual_follows_background": +1, "counterfactual_drop": +1, "representation_bias": +1}


@dataclass
class DemoConfig:
    """The demo's own settings. Paths inside `synth` and `pretrain` (out, shards, name) and
    `pretrain.seed` are set by the demo; everything else is used as given."""

    out: str = "out/demo"
    synth: SynthConfig = field(default_factory=SynthConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    # 8 epochs, evaluated every 2nd (the cosine schedule anneals over them; curves.png). Ray Train's
    # local mode (num_workers 0): each run trains in the task that fits it. A worker group's start-up (a
    # dozen fresh actor processes, each importing torch) took longer than a model's training here. One
    # torch thread a run, three runs at once (debias.sweep.concurrent_runs): tiny convolutions use two
    # cores better as runs than as threads. Where the time goes: docs/benchmarks.md.
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(
        eval_every_epochs=2, optim=OptimConfig(epochs=8), scaling=ScalingConfig(num_workers=0, cpus_per_worker=0.5)))
    bias: BiasConfig = field(default_factory=BiasConfig)
    # Every variant is trained once per seed (pretrain.seed: initial weights, data order, the eval
    # clips); the synthetic benchmark stays the same (synth.seed). One run cannot tell a gap from noise.
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_parallel: int = 0  # training runs at once; 0: as many as the CPUs hold (debias.sweep.concurrent_runs)
    run_cpus: float = 0.25  # each run's task, beside the worker's CPUs it holds in local mode (it trains there)
    min_ood_gain: float = 0.10  # the claim, on the means over seeds: SDN's ood_acc beats the baseline's by this
    max_val_drop: float = 0.05  # ... while its val_acc is at most this much lower

    def __post_init__(self) -> None:
        check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds",
              f"needs at least one seed, each once, got {self.seeds}")
        check(self.max_parallel >= 0, "max_parallel", "must be >= 0 (0 = auto)")


def variants(cfg: PretrainConfig) -> dict[str, tuple[float, float]]:
    """The ablation: (lambda_scene, lambda_mask) per variant, from the SDN weights in the config."""
    ls, lm = cfg.loss.lambda_scene, cfg.loss.lambda_mask
    return {"baseline": (0.0, 0.0), "scene_only": (ls, 0.0), "mask_only": (0.0, lm), "sdn": (ls, lm)}


def run_configs(cfg: DemoConfig, shards: str, out: str) -> dict[tuple[str, int], PretrainConfig]:
    """Every (variant, seed) run, the runs with the mask loss (twice the clips) first: started first,
    they do not end alone on the machine after the short ones."""
    runs = {}
    for name, (ls, lm) in sorted(variants(cfg.pretrain).items(), key=lambda v: -v[1][1]):
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


def run_demo(cfg: DemoConfig) -> dict:
    out = storage.absolute(cfg.out)
    storage.delete(out)  # a demo is always a fresh, complete run
    timings: dict[str, float] = {}
    t0 = t = time.perf_counter()
    run_synth(dataclasses.replace(cfg.synth, out=storage.join(out, "synth")))
    timings["synth_s"] = time.perf_counter() - t

    t = time.perf_counter()
    # The curated row order is the training batches' order. Ray Data's decoders finish in any order, so
    # two curations of the same benchmark gave differently ordered shards (and differently trained
    # models); kept in input order, they are the same, and a rerun of the demo reproduces its numbers.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    pre = PreprocessConfig(out=storage.join(out, "data"), seed=cfg.synth.seed, decode=cfg.decode,
                           input=InputConfig(manifest=storage.join(out, "synth", "source", "manifest.csv")),
                           labels=LabelsConfig(mask_provider="annotations", scene_provider="annotations"))
    curated = run_preprocess(pre)
    timings["preprocess_s"] = time.perf_counter() - t

    t = time.perf_counter()
    init_ray()
    configs = run_configs(cfg, pre.out, out)
    cluster = ray.cluster_resources()
    parallel = cfg.max_parallel or concurrent_runs(cfg.pretrain, cfg.run_cpus, cluster)
    print(f"demo: {len(configs)} training runs ({len(VARIANTS)} variants x seeds {cfg.seeds}), {parallel} at a "
          f"time on {cluster.get('CPU', 0):g} CPUs")
    num_actions, scenes = len(read_classes(pre.out)), num_scenes(pre.out)
    # This process only waits on the runs: it measures each finished model meanwhile, on one thread.
    torch.set_num_threads(1)
    pending, running, results = list(configs), {}, {}
    bias_data: BiasData | None = None
    bias_s = 0.0
    while pending or running:
        while pending and len(running) < parallel:
            key = pending.pop(0)
            running[train.options(num_cpus=run_task_cpus(cfg.pretrain, cfg.run_cpus)).remote(to_dict(configs[key]))] = key
        done, _ = ray.wait(list(running), num_returns=1)
        key = running.pop(done[0])
        result = ray.get(done[0])
        tb = time.perf_counter()
        bias_data = bias_data or load_bias_data(pre.out, cfg.bias)
        model, _ = load_model(result["run"])
        result["bias"] = measure_bias(model, pre.out, num_actions, scenes, cfg.bias, bias_data)
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
    return write_report(cfg, out, curated, results, dataset_bias(bias_data, num_actions), num_actions, scenes,
                        timings)


def per_model(results: dict, cfg: DemoConfig) -> dict[str, dict]:
    """One entry per run: its variant, seed, loss weights, final trainer figures and bias measures."""
    rows = {}
    for (name, seed), r in results.items():
        ls, lm = variants(cfg.pretrain)[name]
        final = r["final"]
        rows[f"{name}_seed{seed}"] = {
            "variant": name, "seed": seed, "lambda_scene": ls, "lambda_mask": lm,
            "val_acc": final["val_acc"], "ood_acc": final["ood_test_acc"],  # claims: ood_test (debias/selection.py)
            # On `ood` the scene is independent of the action, so the scene head's accuracy there is the
            # scene information its adversary still finds. Without the scene loss the head is untrained: n/a.
            "ood_scene_head_acc": final["ood_test_scene_acc"] if ls > 0 else None,
            "val_masked_entropy": final["val_masked_entropy"],
            **{k: v for k, v in r["bias"].items() if k != "videos"}}
    return rows


def aggregate(rows: dict[str, dict], keys: list[str]) -> dict[str, dict]:
    """Per variant: mean, standard deviation (sample, n - 1; 0 for one seed) and the values over seeds."""
    out = {}
    for name in VARIANTS:
        mine = [r for r in rows.values() if r["variant"] == name]
        entry: dict = {"lambda_scene": mine[0]["lambda_scene"], "lambda_mask": mine[0]["lambda_mask"],
                       "seeds": [r["seed"] for r in mine]}
        for k in keys:
            values = [r[k] for r in mine if r.get(k) is not None]
            entry[k] = statistics.fmean(values) if values else None
            entry[f"{k}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
            entry[f"{k}_values"] = values
        out[name] = entry
    return out


def separation(means: dict[str, dict], measures: dict[str, int]) -> dict[str, dict]:
    """Per measure: the variants ordered from most to least scene-reliant by their means, and for each
    pair of neighbours in that order and for baseline vs SDN whether the gap between the means exceeds
    the sum of their standard deviations over seeds (mean +- std intervals apart)."""
    out = {}
    for k, sign in measures.items():
        order = sorted(VARIANTS, key=lambda v: -sign * means[v][k])

        def apart(a: str, b: str) -> dict:
            gap = abs(means[a][k] - means[b][k])
            spread = means[a][f"{k}_std"] + means[b][f"{k}_std"]
            return {"pair": f"{a} > {b}", "gap": gap, "spread": spread, "separated": gap > spread}

        base_sdn = apart("baseline", "sdn")
        out[k] = {"order": order, "neighbours": [apart(a, b) for a, b in zip(order, order[1:])],
                  "baseline_vs_sdn": {**base_sdn,
                                      "baseline_more_reliant": sign * (means["baseline"][k] - means["sdn"][k]) > 0}}
    return out


def claim(means: dict[str, dict], rows: dict[str, dict], cfg: DemoConfig) -> dict:
    """The demo's claim on the means over seeds, the spread beside it, and on how many seeds it holds alone."""
    gain = means["sdn"]["ood_acc"] - means["baseline"]["ood_acc"]
    drop = means["baseline"]["val_acc"] - means["sdn"]["val_acc"]
    per_seed = []
    for seed in cfg.seeds:
        s, b = rows[f"sdn_seed{seed}"], rows[f"baseline_seed{seed}"]
        per_seed.append(s["ood_acc"] - b["ood_acc"] >= cfg.min_ood_gain and b["val_acc"] - s["val_acc"] <= cfg.max_val_drop)
    return {"ood_gain": gain, "val_drop": drop, "min_ood_gain": cfg.min_ood_gain, "max_val_drop": cfg.max_val_drop,
            "holds": gain >= cfg.min_ood_gain and drop <= cfg.max_val_drop,
            "ood_acc_std": {v: means[v]["ood_acc_std"] for v in ("baseline", "sdn")},
            "val_acc_std": {v: means[v]["val_acc_std"] for v in ("baseline", "sdn")},
            "holds_on_seeds": sum(per_seed), "seeds": len(per_seed)}


def mean_histories(results: dict) -> dict[str, list[dict]]:
    """Per variant, the per-epoch metrics averaged over its seeds (the numeric ones every seed has)."""
    out = {}
    for name in VARIANTS:
        histories = [r["history"] for (v, _), r in results.items() if v == name]
        epochs = min(len(h) for h in histories)
        out[name] = [{k: statistics.fmean(h[e][k] for h in histories) for k, v in histories[0][e].items()
                      if isinstance(v, (int, float)) and all(k in h[e] for h in histories)} for e in range(epochs)]
    return out


def class_drops(results: dict, variants: tuple[str, ...]) -> list[dict]:
    """Per action class, each variant's accuracy drop from in-distribution to out-of-context (the runs'
    per_class.json: `drop_SPLIT` for each eval split after the first), mean over seeds; sorted by the
    first variant's drop, largest first (the actions that lean on their scene most)."""
    drops: dict[tuple[str, str], list[float]] = {}
    for (variant, _seed), r in results.items():
        for row in r["per_class"] if variant in variants else []:
            for key, v in row.items():
                if key.startswith("drop_") and v is not None:
                    drops.setdefault((row["class"], f"{variant}_{key}"), []).append(v)
    classes = list(dict.fromkeys(c for c, _ in drops))
    # columns in the order of `variants` (the runs finish in any order)
    keys = [k for v in variants for k in sorted({k for _, k in drops if k.startswith(f"{v}_")})]
    rows = [{"class": c, **{k: statistics.fmean(drops[c, k]) for k in keys if (c, k) in drops}} for c in classes]
    return sorted(rows, key=lambda r: -r.get(keys[0], 0.0)) if keys else rows


def fmt(entry: dict, key: str) -> str:
    """mean +- std over seeds, or n/a."""
    return "n/a" if entry[key] is None else f"{entry[key]:.3f} ± {entry[f'{key}_std']:.3f}"


def write_report(cfg: DemoConfig, out: str, curated: dict, results: dict, data_bias: dict, num_actions: int,
                 scenes: int, timings: dict) -> dict:
    rows = per_model(results, cfg)
    means = aggregate(rows, list(TRAINER_FIGURES) + ["scene_mdl_compression", *BIAS_MEASURES])
    verdict = claim(means, rows, cfg)
    apart = separation(means, BIAS_MEASURES)
    drops = class_drops(results, ("baseline", "sdn"))
    paired = ablation(rows, "ood_acc", cfg.min_ood_gain)  # per-seed differences on ood_test, 95 % intervals
    summary = {**provenance(), **means, "claim": verdict, "separation": apart, "dataset_bias": data_bias,
               "ablation": paired, "interval_claim": interval_claim(rows, "ood_acc", "val_acc", cfg.min_ood_gain, cfg.max_val_drop),
               "splits": {"reported_on": "ood_test", "chosen_on": "ood_val (weights from a sweep on it); last epoch's model"},
               "class_drops": drops,
               "runs": rows, "data": {k: curated[k] for k in ("videos_ok", "videos_failed", "ok_by_split")},
               "timings_s": {k: round(v, 1) for k, v in timings.items()}, "config": to_dict(cfg)}
    storage.write_json(storage.join(out, "summary.json"), summary)

    plot_seeds(rows, "variant", list(VARIANTS), ["val_acc", "ood_acc", *BIAS_MEASURES], storage.join(out, "bias.png"),
               chance={"ood_acc": 1 / num_actions, "val_acc": 1 / num_actions, "masked_action_acc": 1 / num_actions,
                       "masked_action_prob": 1 / num_actions,
                       "scene_probe_acc": 1 / scenes})
    plot_curves(mean_histories(results), ["train_acc", "val_acc", "ood_val_acc", "ood_test_acc", "val_masked_entropy"],
                storage.join(out, "curves.png"))
    n = len(cfg.seeds)
    main_rows = [{"variant": v, **{k: fmt(means[v], k) for k in TRAINER_FIGURES}} for v in VARIANTS]
    bias_rows = [{"variant": v, **{k: fmt(means[v], k) for k in ["scene_mdl_compression", *BIAS_MEASURES]}}
                 for v in VARIANTS]
    apart_rows = [{"measure": k, "order (most scene-reliant first)": " > ".join(a["order"]),
                   "baseline vs SDN: gap / spread": f"{a['baseline_vs_sdn']['gap']:.3f} / {a['baseline_vs_sdn']['spread']:.3f}",
                   "separates baseline from SDN": "yes" if a["baseline_vs_sdn"]["separated"]
                   and a["baseline_vs_sdn"]["baseline_more_reliant"] else "no",
                   "neighbours apart": f"{sum(p['separated'] for p in a['neighbours'])} of 3"} for k, a in apart.items()]
    word = "holds" if verdict["holds"] else "does NOT hold"
    report = "\n".join([
        "# debias demo: scene-debiased training on the synthetic scene-bias benchmark", "",
        f"{summary['date']}, commit {summary['commit']}; {summary['machine']}.", "",
        f"Benchmark: bias={cfg.synth.bias} (share of train/val videos shown in their action's home scene); "
        f"`ood` draws scenes independently of the action. Videos: {curated['ok_by_split']}. Each variant "
        f"trained with seeds {cfg.seeds}: mean ± standard deviation over the {n} seeds.", "",
        table(main_rows, ["variant", *TRAINER_FIGURES]), "",
        f"Claim on the means (SDN ood_acc >= baseline + {cfg.min_ood_gain:.2f}, val_acc drop <= "
        f"{cfg.max_val_drop:.2f}): **{word}** (ood gain {verdict['ood_gain']:+.3f}, val drop "
        f"{verdict['val_drop']:+.3f}; ood_acc std baseline {verdict['ood_acc_std']['baseline']:.3f}, SDN "
        f"{verdict['ood_acc_std']['sdn']:.3f}); it holds on {verdict['holds_on_seeds']} of {n} seeds alone.", "",
        "Paired per-seed differences of ood_test accuracy (95 % intervals; verdict on the paired t):", "",
        ablation_table(paired), "",
        "![val and ood accuracy and the bias measures per variant: mean, std and every seed](bias.png)", "",
        "## Scene-bias measures", "",
        table(bias_rows, ["variant", "scene_mdl_compression", *BIAS_MEASURES]), "",
        f"`scene_probe_acc`: a fresh linear probe reading the scene from the frozen features on "
        f"`{cfg.bias.scene_split}` (chance {1 / scenes:.3f}). `scene_mdl_bits`: the online codelength of those "
        f"scene labels given the features (Voita & Titov, 2020; uniform code "
        f"{rows[next(iter(rows))]['scene_mdl_uniform_bits']:.1f} bits; compression = uniform / codelength). "
        f"`masked_action_acc`: the model's own action accuracy on `{cfg.bias.test_split}` clips with the people "
        f"removed, `masked_action_prob` the mean probability it gives the true action there (chance "
        f"{1 / num_actions:.3f} for both). `counterfactual_*`: the people pasted onto the background of "
        f"another action's clip; `follows_background` is the share predicted as that clip's action. "
        f"`representation_bias`: log(accuracy / chance) of a linear probe reading the action from the features "
        f"of scene-only clips (fitted on `{cfg.bias.fit_split}`).", "",
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
        "Timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in timings.items()), "",
    ])
    storage.write_text(storage.join(out, "report.md"), report)
    print("\n" + table(main_rows, ["variant", *TRAINER_FIGURES]))
    print("\n" + table(bias_rows, ["variant", "scene_mdl_compression", *BIAS_MEASURES]))
    print(f"\nclaim {word} on the means over {n} seeds: SDN ood gain {verdict['ood_gain']:+.3f}, "
          f"val drop {verdict['val_drop']:+.3f} (holds on {verdict['holds_on_seeds']} of {n} seeds alone)")
    print(f"summary: {storage.join(out, 'summary.json')}  report: {storage.join(out, 'report.md')}  "
          f"plots: {storage.join(out, 'bias.png')}, {storage.join(out, 'curves.png')}  ({timings['total_s']:.0f} s)")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = job_parser("debias demo", __doc__, out_option=True)
    args = parser.parse_args(argv)
    run_demo(load_job_config(DemoConfig, args))


if __name__ == "__main__":
    main()
