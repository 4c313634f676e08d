"""The shapes student sweep: what a TiUE student's settings do at a fixed budget.

Each variant is configs/shapes-tiue-ablation.yaml (the shipped recipe's settings, 400 steps,
seed 0) with the official fake-score loss (`lora_loss: alphabar`) and a few settings changed.
For each: train it (resumable: a rerun continues an interrupted run and skips finished ones),
then `tiue eval` it at N = 256 and measure its seed diversity. A variant with a list of budgets
is one run, measured at each.
Lanes run side by side on a 2-core machine, one thread each:

    OMP_NUM_THREADS=1 python studies/shapes_student_sweep.py --only base leading K2
    OMP_NUM_THREADS=1 python studies/shapes_student_sweep.py --only cfg1.5 kl1 K8
    python studies/shapes_student_sweep.py --table      # the results so far, as markdown

Runs go to runs/sweep/NAME, results to runs/sweep/NAME/eval.json and diversity.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from tiue.files import write_text_atomically

REPO = Path(__file__).resolve().parents[1]
SWEEP_DIR = REPO / "runs" / "sweep"
BASE_CONFIG = "configs/shapes-tiue-ablation.yaml"

# The sweep predates the shipped recipe's `lora_loss: teacher`: its base is the official fake-score loss.
BASE_SETTINGS = {"lora_loss": "alphabar"}
# name -> (settings over BASE_CONFIG and BASE_SETTINGS, what it tests); each run's full config is
# written beside it
VARIANTS: dict[str, tuple[dict, str]] = {
    "base": ({}, "the official fake-score loss, 400 steps"),
    "base-200": ({"max_steps": 200}, "base at 200 steps"),
    "base-800": ({"max_steps": 800}, "base at 800 steps"),
    "leading": ({"timestep_spacing": "leading"}, "encoder at t = 751 (leading spacing) instead of t = 999"),
    "cfg1.5": ({"guidance_scale": 1.5}, "teacher CFG 1.5 (the teacher's best 4-step row) instead of 2"),
    "cfg3": ({"guidance_scale": 3.0}, "teacher CFG 3 instead of 2"),
    "kl1": ({"lambda_kl": 1.0}, "KL weight 1.0 instead of 0.1"),
    "lora64": (
        {"lora_rank": 64, "lora_alpha": 108, "lora_targets": "to_q,to_k,to_v,to_out.0"},
        "a larger fake score: rank 64 on q, k, v and out",
    ),
    "lora-teacher": (
        {"lora_loss": "teacher"}, "the fake score trained on the teacher's own v objective, not alphabar-weighted epsilon"
    ),
    "lora-teacher-long": (
        {"lora_loss": "teacher", "max_steps": [800, 1600, 2700]},
        "lora-teacher, one run measured at 800, 1600 and 2700 steps",
    ),
    "lora-teacher-cfg3": (
        {"lora_loss": "teacher", "guidance_scale": 3.0, "max_steps": [400, 800]},
        "lora-teacher with teacher CFG 3 instead of 2, measured at 400 and 800 steps",
    ),
    "lora-teacher-cfg4.5": (
        {"lora_loss": "teacher", "guidance_scale": 4.5, "max_steps": [400]},
        "lora-teacher with teacher CFG 4.5 instead of 2, at 400 steps",
    ),
    "lora-teacher-low-t": (
        {"lora_loss": "teacher", "vsd_max_timestep": 500, "max_steps": [400, 800]},
        "lora-teacher with VSD timesteps in [20, 500] instead of [20, 980], measured at 400 and 800 steps",
    ),
    "lora-teacher-noema": (
        {"lora_loss": "teacher", "ema_decay": 0.0, "max_steps": [400, 800]},
        "lora-teacher without EMA (the raw weights) instead of EMA 0.99, measured at 400 and 800 steps",
    ),
    "lora-teacher-ema0.999": (
        {"lora_loss": "teacher", "ema_decay": 0.999, "max_steps": [400, 800]},
        "lora-teacher with EMA 0.999 instead of 0.99, measured at 400 and 800 steps",
    ),
    "lora-teacher-lr3e-4": (
        {"lora_loss": "teacher", "learning_rate": 3e-4, "max_steps": [400, 800]},
        "lora-teacher with student lr 3e-4 instead of 1e-4, measured at 400 and 800 steps",
    ),
    "vsd-low-t": ({"vsd_max_timestep": 500}, "VSD timesteps in [20, 500] instead of [20, 980]"),
    "lr3e-5-1200": ({"learning_rate": 3e-5, "max_steps": 1200}, "student lr 3e-5 over 1200 steps"),
    "K2": ({"num_steps": 2}, "K = 2 decoder steps (paper Table 4)"),
    "K8": ({"num_steps": 8}, "K = 8 decoder steps (paper Table 4)"),
    "lora-teacher-K2": ({"lora_loss": "teacher", "num_steps": 2}, "lora-teacher with K = 2"),
    "lora-teacher-K8": ({"lora_loss": "teacher", "num_steps": 8}, "lora-teacher with K = 8"),
}


def run(command: list[str], log: Path) -> None:
    print("$", " ".join(command), flush=True)
    with open(log, "a") as out:
        subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=True)


def measurements(name: str) -> list[tuple[str, str, int]]:
    """A variant's (table label, file suffix, budget) per measured budget. A list of budgets is
    one run measured at each: final/ is kept as final-BUDGET/, beside eval-BUDGET.json."""
    budgets = VARIANTS[name][0].get("max_steps", yaml.safe_load((REPO / BASE_CONFIG).read_text())["max_steps"])
    if isinstance(budgets, int):
        return [(name, "", budgets)]
    return [(f"{name} @ {budget}", f"-{budget}", budget) for budget in budgets]


def variant(name: str) -> None:
    out = SWEEP_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    for _, suffix, budget in measurements(name):
        train_and_measure(out, VARIANTS[name][0], budget, suffix)


def train_and_measure(out: Path, settings: dict, max_steps: int, suffix: str) -> None:
    log = out / "sweep.log"
    final = out / f"final{suffix}"
    if not final.is_dir():
        config = {**yaml.safe_load((REPO / BASE_CONFIG).read_text()), **BASE_SETTINGS, **settings, "max_steps": max_steps,
                  "output_dir": str(out)}
        write_text_atomically(out / "sweep-config.yaml", yaml.safe_dump(config, sort_keys=False))
        run(["tiue", "train", "--config", str(out / "sweep-config.yaml"), "--resume", "latest"], log)
        if suffix:
            (out / "final").rename(final)
    steps = str(settings.get("num_steps", 4))
    if not (out / f"eval{suffix}.json").is_file():
        run(["tiue", "eval", "--model", str(final), "--steps", steps, "--num-images", "256", "--threads", "1",
             "--no-progress", "--json", str(out / f"eval{suffix}.json")], log)
    if not (out / f"diversity{suffix}.json").is_file():
        sys.path.insert(0, str(REPO / "studies"))
        from shapes_seed_diversity import diversity

        std, near_copies = diversity(str(final), int(steps), "loopfree", None)
        write_text_atomically(out / f"diversity{suffix}.json", json.dumps({"std": std, "near_copies": near_copies}))


def table() -> str:
    rows = ["| variant | what it tests | FID | recall | accuracy | shape accuracy | seed diversity: per-pixel std (near-copy pairs) |",
            "|---|---|---|---|---|---|---|"]
    for name, (_, what) in VARIANTS.items():
        out = SWEEP_DIR / name
        for label, suffix, _ in measurements(name):
            if not (out / f"eval{suffix}.json").is_file():
                continue
            metrics = json.loads((out / f"eval{suffix}.json").read_text())
            diversity = ""
            if (out / f"diversity{suffix}.json").is_file():
                seeds = json.loads((out / f"diversity{suffix}.json").read_text())
                diversity = f"{seeds['std']:.1f} ({seeds['near_copies']:.0%} near-copies)"
            rows.append(f"| {label} | {what} | {metrics['fid']:.0f} | {metrics['recall']:.3f} | "
                        f"{metrics['accuracy']:.3f} | {metrics['accuracy_shape']:.3f} | {diversity} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="variants to run, in order (default all)")
    parser.add_argument("--table", action="store_true", help="print the results so far and exit")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    for name in args.only or VARIANTS:
        variant(name)


if __name__ == "__main__":
    main()
