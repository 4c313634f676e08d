"""studies/sdxl_train_memory.py on a tiny SDXL-shaped UNet: the fake-tensor trace of one
training step accounts for exactly the bytes it must (parameters, gradients, Adam state)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "sdxl_train_memory.py"


@pytest.fixture(scope="module")
def estimate():
    if not SCRIPT.is_file():
        pytest.skip("studies/ is not part of this checkout")
    pytest.importorskip("peft")
    spec = importlib.util.spec_from_file_location("sdxl_train_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from tiue.testing.tiny_xl import build_xl_unet

    config = {k: v for k, v in build_xl_unet().config.items() if not k.startswith("_")}
    return module.estimate(config, batch=2, num_steps=2, resident_frozen=False, lora_rank=4)


def _bytes(snapshot, name):
    return next((v for k, v in snapshot.items() if str(getattr(k, "value", k)) == name), 0)


def test_parameters_tracked_exactly(estimate):
    assert estimate["lora_param_bytes"] > 0
    expected = estimate["student_param_bytes"] + estimate["teacher_param_bytes"]
    assert _bytes(estimate["before"], "Parameter") == expected
    assert _bytes(estimate["peak"], "Parameter") == expected
    assert _bytes(estimate["before"], "Other") >= estimate["ema_bytes"] == estimate["student_param_bytes"]


def test_gradients_and_adam_state(estimate):
    # After the student's backward: one fp32 gradient per student weight, none for the LoRA
    # (the teacher / fake-score pass of the VSD loss is no-grad).
    assert _bytes(estimate["after_student"], "Gradient") == estimate["student_param_bytes"]
    assert _bytes(estimate["after_student"], "Activation") < estimate["student_param_bytes"]
    # A steady-state step: Adam's exp_avg and exp_avg_sq for both models resident throughout; after
    # both steps the gradients are freed.
    assert _bytes(estimate["end"], "Gradient") == 0
    adam = 2 * (estimate["student_param_bytes"] + estimate["lora_param_bytes"])
    assert adam <= _bytes(estimate["before"], "Optstate") <= adam * 1.001  # + Adam's 0-d step counters
    assert _bytes(estimate["end"], "Optstate") == _bytes(estimate["before"], "Optstate")
    assert estimate["peak"]["Total"] >= estimate["before"]["Total"] + estimate["student_param_bytes"]
