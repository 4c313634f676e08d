"""A `tiue train` child process whose writer of one checkpoint stops halfway (after the EMA
weights, before the LoRA, the optimizers and state.json) for two minutes, or until killed."""


def pausing_train_script(checkpoint_step: int) -> str:
    """Python source for `python -c SCRIPT train ...`; it touches PAUSED in the half-written
    checkpoint folder when it stops there."""
    return f"""
import sys, time
from pathlib import Path
import tiue.train.checkpoint as checkpoint
from tiue.cli import main

write = checkpoint.save_file
def pausing(tensors, filename, *args, **kwargs):
    write(tensors, filename, *args, **kwargs)
    path = Path(filename)
    if path.name == "ema.safetensors" and path.parent.name.startswith(".checkpoint-{checkpoint_step:08d}"):
        (path.parent / "PAUSED").touch()
        time.sleep(120)
checkpoint.save_file = pausing
sys.exit(main(sys.argv[1:]))
"""
