"""Make docs/results/shapes.md: the shapes world's version of the paper's Tables 1 and 3,
sample grids (Fig. 7), decoder-output distributions (Fig. 8 right) and adjacent-step feature
similarity (Fig. 1c). One command, from the repository root:

    OMP_NUM_THREADS=1 python studies/shapes_results.py

Models default to the embedded teacher and student, to the one-step VSD student of
configs/shapes-vsd.yaml, to seeds 1 and 2 of both students' recipes, and to the KL ablation
runs (three seeds with and without KL), all under runs/*/final (see RECIPES).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from tiue.eval.report import format_table
from tiue.eval.runner import EvalSpec, evaluate, reference_metrics, sample_images
from tiue.files import atomic_path, write_text_atomically

REPO = Path(__file__).resolve().parents[1]
GRID_PROMPTS = (
    "a red circle",
    "a small blue square on a yellow background",
    "a large green triangle",
    "a white cross on a black background",
)
GRID_SEEDS = 8
GENERATOR_LABEL = "Generator: fresh right answers to the same captions (the floor at this N)"
RECIPES = {  # recipe -> (command, output folder holding wall_time.txt)
    "configs/shapes-teacher.yaml": ("tiue world train --config configs/shapes-teacher.yaml", "runs/shapes-teacher"),
    "configs/shapes-features.yaml": ("tiue world train --config configs/shapes-features.yaml", "runs/shapes-features"),
    "configs/shapes-tiue.yaml": ("tiue train --config configs/shapes-tiue.yaml", "runs/shapes-tiue"),
    "configs/shapes-vsd.yaml": ("tiue train --config configs/shapes-vsd.yaml", "runs/shapes-vsd"),
}
ABLATION_SEEDS = (0, 1, 2)
for _seed in ABLATION_SEEDS[1:]:  # TiUE against one-step VSD: seed 0 is the shipped recipe itself
    for _name in ("tiue", "vsd"):
        RECIPES[f"configs/shapes-{_name}.yaml seed {_seed}"] = (
            f"tiue train --config configs/shapes-{_name}.yaml --seed {_seed} --output-dir runs/shapes-{_name}-s{_seed}",
            f"runs/shapes-{_name}-s{_seed}",
        )
for _seed in ABLATION_SEEDS:  # the KL ablation: the shipped recipe's settings on a shorter budget
    for _name in ("tiue-ablation", "tiue-nokl"):
        RECIPES[f"configs/shapes-{_name}.yaml seed {_seed}"] = (
            f"tiue train --config configs/shapes-{_name}.yaml --seed {_seed} --output-dir runs/shapes-{_name}-s{_seed}",
            f"runs/shapes-{_name}-s{_seed}",
        )


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="shapes-teacher")
    parser.add_argument("--tiue", default="shapes", help="the TiUE student (K=4, KL 0.1)")
    parser.add_argument("--vsd", default="runs/shapes-vsd/final", help="the one-step VSD student")
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="teacher CFG scale of the 50- and 1-step rows")
    parser.add_argument("--cfg-sweep", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.5],
                        help="teacher CFG scales of the 4-step rows (the target is the best of them)")
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "docs/results")
    parser.add_argument("--render-only", action="store_true",
                        help="rebuild shapes.md from the last run's shapes.json and today's shapes-notes.md, without evaluating "
                             "(give the options that run was given)")
    return parser.parse_args()


def rows(args) -> list[tuple[str, str, EvalSpec]]:
    g = args.guidance_scale
    common = dict(num_images=args.num_images, seed=args.seed, batch_size=64)
    teacher_4 = [
        (f"teacher-4-cfg{c:g}", f"Teacher, 4 DDIM steps, CFG {c:g}",
         EvalSpec(args.teacher, steps=4, mode="loop", guidance_scale=c, **common))
        for c in args.cfg_sweep
    ]
    return [
        ("teacher-50", f"Teacher, 50 DDIM steps, CFG {g:g}", EvalSpec(args.teacher, steps=50, mode="loop", guidance_scale=g, **common)),
        *teacher_4,
        ("teacher-1", f"Teacher, 1 DDIM step at t = 999 (trailing), CFG {g:g}",
         EvalSpec(args.teacher, steps=1, mode="loop", guidance_scale=g, timestep_spacing="trailing", **common)),
        ("teacher-loopfree", "Teacher weights sampled loop-free, K = 4 (no distillation)", EvalSpec(args.teacher, steps=4, **common)),
        ("vsd", "One-step VSD student (K = 1, t = 999)", EvalSpec(args.vsd, steps=1, **common)),
        ("tiue", "TiUE (K = 4, λ_KL = 0.1) — shipped `shapes`", EvalSpec(args.tiue, steps=4, **common)),
    ]


def ablation_specs(args) -> dict[str, list[EvalSpec]]:
    common = dict(steps=4, num_images=args.num_images, seed=args.seed, batch_size=64)
    return {
        label: [EvalSpec(f"runs/shapes-{name}-s{seed}/final", **common) for seed in ABLATION_SEEDS]
        for label, name in (("TiUE, λ_KL = 0.1", "tiue-ablation"), ("TiUE w/o KL", "tiue-nokl"))
    }


def method_specs(args) -> dict[str, list[EvalSpec]]:
    """TiUE and the one-step VSD student on the same recipe budget, three seeds each (seed 0 is
    the shipped recipe's own run)."""
    common = dict(num_images=args.num_images, seed=args.seed, batch_size=64)
    return {
        label: [EvalSpec(f"runs/shapes-{name}/final" if seed == 0 else f"runs/shapes-{name}-s{seed}/final", steps=steps, **common)
                for seed in ABLATION_SEEDS]
        for label, name, steps in (("TiUE (K = 4, λ_KL = 0.1)", "tiue", 4), ("One-step VSD (K = 1, t = 999)", "vsd", 1))
    }


def seeded_metrics(groups: dict[str, list[EvalSpec]]) -> dict[str, dict[str, list[float]]]:
    """Each group's metrics over the seeds whose run exists."""
    out = {}
    for label, specs in groups.items():
        runs = [evaluate(spec) for spec in specs if Path(spec.model).is_dir()]
        if runs:
            out[label] = {key: [r[key] for r in runs] for key in ("fid", "recall", "accuracy", "precision")}
            print(f"{label}: {json.dumps(out[label])}", flush=True)
    return out


def seeded_table(groups: dict[str, dict[str, list[float]]]) -> list[str]:
    return [
        "| student | FID ↓ | Precision ↑ | Recall ↑ | Accuracy ↑ |",
        "|---|---:|---:|---:|---:|",
        *[f"| {label} (n = {len(v['fid'])}) | {mean_std(v['fid'])} | {mean_std(v['precision'])} | {mean_std(v['recall'])} "
          f"| {mean_std(v['accuracy'])} |" for label, v in groups.items()],
    ]


def mean_std(values) -> str:
    values = np.asarray(values, dtype=float)
    digits = 3 if values.mean() < 10 else 0
    if len(values) < 2:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def target_check(metrics: dict, cfg_sweep) -> dict:
    """The issue's targets: the student's FID within 1.5x of the best 4-step teacher row, and
    its accuracy at least 0.9x that row's."""
    best_key = min((f"teacher-4-cfg{c:g}" for c in cfg_sweep), key=lambda k: metrics[k]["fid"])
    best, student = metrics[best_key], metrics["tiue"]
    return {
        "best_teacher_row": best_key,
        "fid_ratio": student["fid"] / best["fid"],
        "accuracy_ratio": student["accuracy"] / best["accuracy"] if best["accuracy"] else None,
        "vsd_fid_ratio": metrics["vsd"]["fid"] / best["fid"],
    }


def save_png(image, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def grid_png(pipe, spec: EvalSpec, path: Path, scale: int = 3) -> None:
    """One row per prompt, one column per seed (seeds spec.seed .. spec.seed + 7)."""
    from PIL import Image

    rows_ = [sample_images(pipe, [p] * GRID_SEEDS, range(GRID_SEEDS), spec) for p in GRID_PROMPTS]
    pixels = np.concatenate([np.concatenate(list(r), axis=1) for r in rows_], axis=0)
    image = Image.fromarray(pixels)
    save_png(image.resize((image.width * scale, image.height * scale), Image.NEAREST), path)


def generator_grid_png(path: Path, scale: int = 3) -> None:
    """The world's own right answers to the grid prompts: what diversity should look like."""
    from PIL import Image

    from tiue.data.shapes import scene_for_caption

    rows_ = [[scene_for_caption(p, 0, i).image for i in range(GRID_SEEDS)] for p in GRID_PROMPTS]
    pixels = np.concatenate([np.concatenate(r, axis=1) for r in rows_], axis=0)
    image = Image.fromarray(pixels)
    save_png(image.resize((image.width * scale, image.height * scale), Image.NEAREST), path)


def decoder_distribution_png(students: dict, path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tiue.eval.analysis import decoder_outputs, gaussian_fit_summary
    from tiue.sampling import load_pipeline

    prompts = [GRID_PROMPTS[i % len(GRID_PROMPTS)] for i in range(64)]
    summaries = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    grid = np.linspace(-5, 5, 400)
    ax.plot(grid, np.exp(-grid**2 / 2) / math.sqrt(2 * math.pi), "r-", label="N(0, 1)")
    for (label, model), colour in zip(students.items(), ("tab:blue", "tab:green")):
        values = decoder_outputs(load_pipeline(model, "cpu", "fp32"), prompts, 4, noise_predictions=True)
        summaries[label] = gaussian_fit_summary(values)
        ax.hist(values.reshape(-1), bins=200, range=(-5, 5), density=True, histtype="step", color=colour, label=label)
    ax.set_xlabel("decoder noise prediction (all K = 4 decoders, 64 prompts)")
    ax.set_ylabel("density")
    ax.legend()
    _save_figure(fig, path)
    return summaries


def _save_figure(fig, path: Path) -> None:
    """Write a figure as a PNG whole (temp name + rename), then free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def similarity_png(teacher: str, path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tiue.eval.analysis import adjacent_step_similarity
    from tiue.sampling import load_pipeline

    result = adjacent_step_similarity(load_pipeline(teacher, "cpu", "fp32"), list(GRID_PROMPTS) * 4, 50)
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = np.arange(1, len(result["encoder"]) + 1)
    ax.plot(steps, result["encoder"], "o-", ms=3, label="encoder (mid block output)")
    ax.plot(steps, result["decoder"], "s-", ms=3, label="decoder (last up block output)")
    ax.set_xlabel("DDIM step i (similarity of step i and i+1 of 50)")
    ax.set_ylabel("cosine similarity")
    ax.legend()
    _save_figure(fig, path)
    return {k: v.tolist() for k, v in result.items()}


def wall_times() -> list[tuple[str, str, float | None]]:
    out = []
    for recipe, (command, folder) in RECIPES.items():
        marker = REPO / folder / "wall_time.txt"
        seconds = float(marker.read_text()) if marker.is_file() else training_seconds(REPO / folder)
        out.append((recipe, command, seconds))
    return out


def training_seconds(run: Path) -> float | None:
    """A `tiue train` run's step time, summed from its last checkpoint's per-step throughput
    (model loading and the final export not included)."""
    states = sorted(run.glob("checkpoints/checkpoint-*/state.json"))
    if not states:
        return None
    state = json.loads(states[-1].read_text())
    samples = state["batch_size"] * state["num_processes"] * state["config"]["gradient_accumulation_steps"]
    return sum(samples / r["samples_per_s"] for r in state["history"])


def main() -> None:
    from tiue.sampling import load_pipeline

    args = parse_args()
    if args.render_only:
        render_from_json(args)
        return
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    metrics, table_rows = {}, []
    metrics["generator"] = reference_metrics(args.num_images, args.seed)
    table_rows.append((GENERATOR_LABEL, metrics["generator"]))
    generator_grid_png(args.out / "shapes-grid-generator.png")
    for key, label, spec in rows(args):
        start = time.perf_counter()
        load_before = os.getloadavg()[0]
        result = evaluate(spec)
        # Other people's jobs share this CPU: keep the load beside every timing.
        result["load_average_1min"] = [load_before, os.getloadavg()[0]]
        print(f"{label}: {json.dumps({k: result[k] for k in ('fid', 'accuracy', 'seconds_per_image')})} "
              f"({time.perf_counter() - start:.0f}s)", flush=True)
        metrics[key] = result
        table_rows.append((label, result))
        pipe = load_pipeline(spec.model, "cpu", "fp32").with_timestep_spacing(spec.timestep_spacing)
        grid_png(pipe, spec, args.out / f"shapes-grid-{key}.png")
    methods = seeded_metrics(method_specs(args))
    ablations = seeded_metrics(ablation_specs(args))
    targets = target_check(metrics, args.cfg_sweep)
    distribution = decoder_distribution_png(
        {"TiUE (λ_KL = 0.1)": "runs/shapes-tiue-ablation-s0/final", "TiUE w/o KL": "runs/shapes-tiue-nokl-s0/final"},
        args.out / "shapes-decoder-distribution.png",
    )
    similarity = similarity_png(args.teacher, args.out / "shapes-feature-similarity.png")
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    summary = {"metrics": metrics, "methods": methods, "ablations": ablations, "targets": targets,
               "decoder_distribution": distribution, "feature_similarity": similarity,
               "wall_times": {r: s for r, _, s in wall_times()}, "revision": revision,
               "torch_threads": args.threads, "machine": platform.processor() or platform.machine()}
    write_text_atomically(args.out / "shapes.json", json.dumps(summary, indent=2, default=str) + "\n")
    write_text_atomically(
        args.out / "shapes.md",
        render_markdown(args, table_rows, methods, ablations, targets, distribution, similarity, revision),
    )
    print(f"wrote {args.out / 'shapes.md'}")


def render_from_json(args) -> None:
    """shapes.md again from shapes.json's numbers, for an edit of the notes."""
    summary = json.loads((args.out / "shapes.json").read_text())
    metrics = summary["metrics"]
    args.threads = summary["torch_threads"]
    table_rows = [(GENERATOR_LABEL, metrics["generator"])] + [(label, metrics[key]) for key, label, _ in rows(args)]
    write_text_atomically(args.out / "shapes.md", render_markdown(
        args, table_rows, summary.get("methods", {}), summary["ablations"], summary["targets"], summary["decoder_distribution"],
        summary["feature_similarity"], summary["revision"]))
    print(f"wrote {args.out / 'shapes.md'}")


def load_range(table_rows) -> str:
    loads = [v for _, m in table_rows for v in m.get("load_average_1min", [])]
    return f"{min(loads):.1f}–{max(loads):.1f}" if loads else "not recorded"


def render_markdown(args, table_rows, methods, ablations, targets, distribution, similarity, revision) -> str:
    notes_path = args.out / "shapes-notes.md"
    notes = notes_path.read_text() if notes_path.is_file() else ""
    lines = [
        "# The shapes world: the whole paper on a CPU",
        "",
        "<!-- Generated by `python studies/shapes_results.py`; edit shapes-notes.md for the discussion. -->",
        "",
        f"N = {args.num_images} generated images per row against {args.num_images} generator scenes with the same "
        f"captions (evaluation seed stream {args.seed}); features from the embedded shapes feature network "
        "(64-d penultimate layer); precision/recall/density/coverage with k = 5; accuracy = share of images whose "
        "every captioned attribute (shape, colour, and size/background when named) the feature network reads back. "
        "Teacher rows sample with DDIM (eta = 0) and the classifier-free guidance scale they name; students "
        "sample loop-free (encoder once, K decoders in one batch). CPU ms/image: batch 64, "
        f"{args.threads} thread{'s' if args.threads != 1 else ''}, VAE decode included, on a 2-core machine shared with other jobs "
        f"(1-minute load average during the timed rows: {load_range(table_rows)}), revision {revision}.",
        "",
        format_table(table_rows, first_header="Sampler"),
        "",
        f"Targets: the best 4-step teacher row is `{targets['best_teacher_row']}`; the shipped student's FID is "
        f"{targets['fid_ratio']:.2f}x its FID (target <= 1.5x) and its accuracy "
        + (f"{targets['accuracy_ratio']:.2f}x" if targets["accuracy_ratio"] is not None else "n/a")
        + f" its accuracy (target >= 0.9x); the one-step VSD student's FID is {targets['vsd_fid_ratio']:.2f}x.",
        "",
        "## TiUE against one-step VSD on the same budget (paper Table 1): three seeds each, mean ± std",
        "",
        *seeded_table(methods),
        "",
        "## KL ablation (paper Table 3): three seeds each, mean ± std",
        "",
        *seeded_table(ablations),
        "",
        "## Samples: 8 seeds per prompt (paper Fig. 7)",
        "",
        "Rows: " + "; ".join(f"“{p}”" for p in GRID_PROMPTS) + ". Columns: seeds 0–7 (the same noise in every grid).",
        "",
    ]
    for key, label in [("generator", GENERATOR_LABEL)] + [(k, l) for k, l, _ in rows(args)]:
        lines += [f"**{label}**", "", f"![{label}](shapes-grid-{key}.png)", ""]
    lines += [
        "## Decoder outputs with and without KL (paper Fig. 8 right)",
        "",
        "![decoder output distribution](shapes-decoder-distribution.png)",
        "",
        "| student | mean | std | excess kurtosis | mean per-sample KL to N(0, 1) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, s in distribution.items():
        lines.append(f"| {label} | {s['mean']:.3f} | {s['std']:.3f} | {s['excess_kurtosis']:.2f} | {s['kl_per_sample']:.4f} |")
    enc, dec = np.array(similarity["encoder"]), np.array(similarity["decoder"])
    lines += [
        "",
        "## Encoder vs decoder features across adjacent timesteps (paper Fig. 1c)",
        "",
        "![feature similarity](shapes-feature-similarity.png)",
        "",
        f"Teacher, 50 DDIM steps (conditional branch), 16 prompts: mean cosine similarity of adjacent steps — "
        f"encoder {enc.mean():.4f} (min {enc.min():.4f}), decoder {dec.mean():.4f} (min {dec.min():.4f}).",
        "",
        "## Recipes and their wall time on this 2-core CPU",
        "",
        "| recipe | command | wall time |",
        "|---|---|---:|",
    ]
    for recipe, command, seconds in wall_times():
        shown = "not rerun for this page (see the notes)" if seconds is None else f"{seconds / 60:.1f} min"
        lines.append(f"| `{recipe}` | `{command}` | {shown} |")
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
