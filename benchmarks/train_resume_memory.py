"""Host memory per rank while `tiue train --resume` reads a checkpoint, with N real CPU processes.

Two launches of `python -m torch.distributed.run --nproc_per_node N` (gloo on CPU) over a teacher
pipeline with the "small" UNet of tiue.testing.tiny (34M parameters, SD-shaped, 4 levels): the
first trains one step and writes a checkpoint; the second builds the trainer with --resume latest,
and each rank records, around the checkpoint read only (tiue.train.checkpoint.resume_run):

- rss_before: VmRSS when the read starts (models, optimizers and the process itself);
- peak_rss: VmHWM over the read (the kernel's peak, reset just before it through
  /proc/self/clear_refs), file-backed pages of mapped files included;
- peak_anon: the highest RssAnon sampled every 2 ms during the read: private memory, what no
  other rank can share;
- anon_after: RssAnon when the read is done.

    OMP_NUM_THREADS=1 python benchmarks/train_resume_memory.py [--processes 2] [--code DIR] [--out FILE.json]

--code runs the trainer of another checkout (say, an older revision unpacked with `git archive`),
so the same measurement compares two versions. Linux only (/proc). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r'''
import json, re, sys, threading, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import tiue.train.checkpoint as ckpt
from tiue.train import TrainConfig, Trainer

def status():
    text = Path("/proc/self/status").read_text()
    return {k: int(v) * 1024 for k, v in re.findall(r"(VmRSS|VmHWM|RssAnon|RssFile):\s+(\d+) kB", text)}

settings, out, phase = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
measured = {}
resume_run = ckpt.resume_run

def measuring_resume_run(trainer, resume):
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before, peak_anon, done = status(), [0], threading.Event()
    def sample():
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], status()["RssAnon"])
            time.sleep(0.002)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        resume_run(trainer, resume)
    finally:
        done.set()
        sampler.join()
    after = status()
    measured.update(rss_before=before["VmRSS"], anon_before=before["RssAnon"], peak_rss=after["VmHWM"],
                    peak_anon=max(peak_anon[0], after["RssAnon"]), anon_after=after["RssAnon"])

ckpt.resume_run = measuring_resume_run
trainer = Trainer(TrainConfig.from_dict(settings))
rank = trainer.accelerator.process_index
if phase == "train":
    trainer.fit()
else:
    assert trainer.step == 1, trainer.step
    (out / f"rank{rank}.json").write_text(json.dumps(measured))
    if hasattr(trainer, "close"):
        trainer.close()
'''


def launch(code: Path, processes: int, settings: dict, out: Path, phase: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{code}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    worker = out / "worker.py"
    worker.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(worker), json.dumps(settings), str(out), phase]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=out)
    if proc.returncode:
        raise SystemExit(f"{phase} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose trainer runs (default: this one)")
    parser.add_argument("--out", type=Path, help="write the per-rank numbers as JSON here")
    args = parser.parse_args()
    sys.path.insert(0, str(args.code))
    from tiue.testing.tiny import save_tiny_pipeline

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        teacher = save_tiny_pipeline(scratch / "teacher", unet_size="small")
        captions = scratch / "captions.txt"
        captions.write_text("\n".join(f"a photo of object number {i}" for i in range(16)) + "\n")
        settings = dict(
            teacher=str(teacher), captions=str(captions), output_dir=str(scratch / "run"), max_steps=1,
            batch_size=1, num_steps=2, resolution=64, device="cpu", report_to="none", validation_prompts=[],
            learning_rate=1e-6,
        )
        launch(args.code, args.processes, settings, scratch, "train")
        launch(args.code, args.processes, dict(settings, max_steps=2, resume="latest"), scratch, "resume")
        checkpoint = next((scratch / "run" / "checkpoints").glob("checkpoint-*"))
        files = {p.name: p.stat().st_size for p in checkpoint.iterdir()}
        ranks = [json.loads((scratch / f"rank{r}.json").read_text()) for r in range(args.processes)]

    revision = subprocess.run(["git", "-C", str(args.code), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip() or str(args.code)
    mib = 2**20
    print(f"resume of a {sum(files.values()) / mib:.0f} MiB checkpoint ({', '.join(f'{k} {v / mib:.0f}' for k, v in sorted(files.items()) if v > mib)} MiB), "
          f"{args.processes} CPU processes, code {args.code} ({revision})\n")
    print("| rank | RSS before | peak RSS during read | peak RssAnon during read | RssAnon before -> after |")
    print("|---|---|---|---|---|")
    for rank, m in enumerate(ranks):
        print(f"| {rank} | {m['rss_before'] / mib:.0f} MiB | {m['peak_rss'] / mib:.0f} MiB (+{(m['peak_rss'] - m['rss_before']) / mib:.0f}) "
              f"| {m['peak_anon'] / mib:.0f} MiB (+{(m['peak_anon'] - m['anon_before']) / mib:.0f}) "
              f"| {m['anon_before'] / mib:.0f} -> {m['anon_after'] / mib:.0f} MiB |")
    if args.out:
        args.out.write_text(json.dumps({"code": str(args.code), "revision": revision, "checkpoint_files": files,
                                        "ranks": ranks}, indent=1))


if __name__ == "__main__":
    main()
