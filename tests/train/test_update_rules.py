"""What the trainer promises about each update, checked on real steps of the tiny teacher:
fp16 loss scaling, freezing, EMA, clipping, Adam's settings, the update order, the LoRA init."""

import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tiue.train import Trainer
from tiue.train.models import lora_state_dict

LOSS_SCALE = 2.0**12


class GradientTap:
    """Records, at every optimizer.step(), a copy of each gradient that optimizer is about to use."""

    def __init__(self):
        self.steps: list[tuple[torch.optim.Optimizer, list[torch.Tensor]]] = []
        self.handle = register_optimizer_step_pre_hook(self._record)

    def _record(self, optimizer, args, kwargs):
        grads = [p.grad.detach().clone() for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.steps.append((optimizer, grads))

    def of(self, optimizer) -> list[list[torch.Tensor]]:
        optimizer = getattr(optimizer, "optimizer", optimizer)  # the optimizer inside a wrapper steps
        return [grads for opt, grads in self.steps if opt is optimizer]

    def close(self):
        self.handle.remove()


@pytest.fixture
def tap():
    tap = GradientTap()
    yield tap
    tap.close()


def fp16_accelerators(monkeypatch) -> dict:
    """Every Accelerator runs accelerate's own fp16 path on the CPU: mixed precision "fp16", a real
    CPU GradScaler and native AMP on, so accelerate scales every backward and its unscale and
    clipping helpers (`unscale_gradients`, `clip_grad_norm_`, a prepared optimizer's `step`) act as
    on a GPU. accelerate makes no scaler on a CPU and the trainer refuses fp16 there, so the
    accelerator is built as fp16 behind the trainer's back. Autocast stays off and the frozen
    models keep fp32: the loss scale, a power of two, is then the only difference from an
    unscaled run, and gradients must match it to round-off. (bf16 would not do: accelerate uses no scaler with it.) Returns the scaler's
    settings, read at each Accelerator's creation."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import AutocastKwargs

    original = Accelerator.__init__
    settings = {"init_scale": LOSS_SCALE, "growth_interval": 10**9}

    def init(self, *args, **kwargs):
        AcceleratorState._reset_state()  # its mixed precision is fixed once set in a process
        original(self, *args, **dict(kwargs, mixed_precision="fp16"))
        assert self.mixed_precision == "fp16"
        self.scaler = torch.amp.GradScaler("cpu", **settings)
        self.native_amp = True
        self.autocast_handler = AutocastKwargs(enabled=False)

    monkeypatch.setattr(Accelerator, "__init__", init)
    monkeypatch.setattr(Trainer, "weight_dtype", property(lambda self: torch.float32))
    return settings


@pytest.fixture
def cpu_loss_scaler(monkeypatch):
    yield fp16_accelerators(monkeypatch)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # later tests build their own "no" accelerators


def flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def snapshot(trainer) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "student": {k: v.clone() for k, v in trainer.student_unet.state_dict().items()},
        "lora": {k: v.clone() for k, v in lora_state_dict(trainer.fake_score_unet).items()},
    }


def run_steps(make_config, tmp_path, name, steps=2, **overrides):
    trainer = Trainer(make_config(max_steps=steps, output_dir=str(tmp_path / name), **overrides))
    trainer.fit()
    return trainer


def test_loss_scaled_steps_equal_unscaled_steps_each_model_unscaled_once(make_config, tmp_path, tap, cpu_loss_scaler):
    # The reference: the same fp16 accelerator at loss scale 1, where no unscale can be wrong.
    cpu_loss_scaler["init_scale"] = 1.0
    plain = run_steps(make_config, tmp_path, "scale1")
    assert plain.accelerator.scaler.get_scale() == 1.0
    plain_grads = {"student": tap.of(plain.student_optimizer), "lora": tap.of(plain.lora_optimizer)}
    tap.steps.clear()

    cpu_loss_scaler["init_scale"] = LOSS_SCALE
    scaled = run_steps(make_config, tmp_path, "scaled")
    assert scaled.accelerator.scaler.get_scale() == LOSS_SCALE
    scaled_grads = {"student": tap.of(scaled.student_optimizer), "lora": tap.of(scaled.lora_optimizer)}

    for name in ("student", "lora"):
        assert len(plain_grads[name]) == len(scaled_grads[name]) == 2, name
        for a, b in zip(plain_grads[name], scaled_grads[name]):
            a, b = flat(a), flat(b)
            assert a.norm() > 0
            # Unscaled exactly once: neither LOSS_SCALE times too large nor too small.
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6 * a.abs().max().item(), msg=name)
    for name in ("student", "lora"):
        after_plain, after_scaled = snapshot(plain)[name], snapshot(scaled)[name]
        for key in after_plain:
            torch.testing.assert_close(after_scaled[key], after_plain[key], rtol=1e-4, atol=1e-7)
    for a, b in zip(plain.history.records, scaled.history.records):
        assert b["grad_norm/lora"] == pytest.approx(a["grad_norm/lora"], rel=1e-4)
        assert b["grad_norm/student"] == pytest.approx(a["grad_norm/student"], rel=1e-4)


def test_the_loss_scaler_is_updated_once_per_step(make_config, tmp_path, cpu_loss_scaler):
    # growth_interval 1: every update after a step without overflow doubles the scale, so a second
    # update in a step (say, one per optimizer) would show as a scale grown twice as often.
    cpu_loss_scaler["growth_interval"] = 1
    trainer = run_steps(make_config, tmp_path, "growth", steps=3)
    assert trainer.nonfinite_total == trainer.overflow_total == 0
    assert [r["loss_scale"] for r in trainer.history.records] == [LOSS_SCALE * 2, LOSS_SCALE * 4, LOSS_SCALE * 8]


def test_fp16_overflow_steps_are_skipped_and_never_end_the_run(make_config, tmp_path, cpu_loss_scaler):
    # More overflows in a row than --max-consecutive-nonfinite allows non-finite losses.
    trainer = Trainer(make_config(max_steps=3, max_consecutive_nonfinite=2, output_dir=str(tmp_path / "overflow")))
    trainer.student_unet.conv_in.weight.register_hook(lambda grad: torch.full_like(grad, math.inf))
    before = snapshot(trainer)
    result = trainer.fit()
    assert result.step == 3 and result.final is not None
    assert trainer.overflow_total == 3 and trainer.nonfinite_total == 0
    assert trainer.accelerator.scaler.get_scale() == LOSS_SCALE * trainer.accelerator.scaler.get_backoff_factor() ** 3
    after = snapshot(trainer)
    for name in ("student", "lora"):
        assert all(torch.equal(before[name][k], after[name][k]) for k in before[name]), f"{name} changed"
    assert [r["overflow/total"] for r in trainer.history.records] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("broken", ["student", "lora"])
def test_an_overflow_in_either_model_changes_neither_and_lowers_the_scale(
    make_config, tmp_path, cpu_loss_scaler, broken
):
    trainer = Trainer(make_config(max_steps=1, output_dir=str(tmp_path / broken)))
    params = list(trainer.student_unet.parameters()) if broken == "student" else trainer.lora_params
    # An fp16-style overflow in one gradient of one model only.
    params[0].register_hook(lambda grad: torch.full_like(grad, math.inf))
    before = snapshot(trainer)
    trainer.fit()
    after = snapshot(trainer)
    for name in ("student", "lora"):
        assert all(torch.equal(before[name][k], after[name][k]) for k in before[name]), f"{name} changed"
    assert trainer.ema.num_updates == 0
    scaler = trainer.accelerator.scaler
    assert scaler.get_scale() == LOSS_SCALE * scaler.get_backoff_factor()
    assert trainer.overflow_total == 1 and trainer.nonfinite_total == 0


def test_fp16_on_a_cpu_is_refused_before_loading(make_config):
    with pytest.raises(ValueError, match="--mixed-precision: fp16 needs a CUDA device"):
        Trainer(make_config(mixed_precision="fp16", teacher="/no/such/teacher/is/loaded"))


def test_the_trainer_itself_freezes_teacher_text_encoder_and_vae(make_config):
    trainer = Trainer(make_config(max_steps=1))
    base = [(n, p) for n, p in trainer.fake_score_unet.named_parameters() if ".fake_score." not in n]
    frozen = {
        "teacher UNet": base,
        "text encoder": list(trainer.text_encoder.named_parameters()),
        "VAE": list(trainer.vae.named_parameters()),
    }
    for name, params in frozen.items():
        assert params and not any(p.requires_grad for _, p in params), f"{name} is trainable"
    assert all(p.requires_grad for p in trainer.lora_params)
    assert all(p.requires_grad for p in trainer.student_unet.parameters())
    # The official precision: frozen UNet and VAE in fp32 unless asked otherwise.
    assert {p.dtype for _, p in base} == {p.dtype for _, p in frozen["VAE"]} == {torch.float32}
    trainer.fit()
    for name, params in frozen.items():
        assert all(p.grad is None for _, p in params), f"{name} received gradients"


def test_ema_follows_the_warmed_up_decay_schedule(make_config, tmp_path):
    decay = 0.15  # below the warm-up's third value, so both branches of min() are exercised
    trainer = Trainer(make_config(max_steps=3, ema_decay=decay, output_dir=str(tmp_path / "ema")))
    name = next(n for n, _ in trainer.student_unet.named_parameters())
    param = dict(trainer.student_unet.named_parameters())[name]
    expected = param.detach().clone()
    after_each_step = []
    handle = getattr(trainer.student_optimizer, "optimizer", trainer.student_optimizer).register_step_post_hook(
        lambda *_: after_each_step.append(param.detach().clone())
    )
    trainer.fit()
    handle.remove()
    assert len(after_each_step) == 3
    for n, weights in enumerate(after_each_step):
        d = min(decay, (1 + n) / (10 + n))  # 0.1, 0.15 (= decay), 0.15
        expected = d * expected + (1 - d) * weights
    torch.testing.assert_close(trainer.ema.state_dict()[name], expected, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(expected, after_each_step[-1])  # the average is not the live weight


def test_each_model_is_clipped_to_its_own_norm(make_config, tmp_path, tap):
    limit = 1e-3
    trainer = run_steps(make_config, tmp_path, "clip", steps=1, max_grad_norm=limit)
    record = trainer.history.records[0]
    for name, optimizer in (("student", trainer.student_optimizer), ("lora", trainer.lora_optimizer)):
        raw = record[f"grad_norm/{name}"]
        assert raw > limit, f"{name}: the test needs a raw norm above the limit"
        (grads,) = tap.of(optimizer)
        assert flat(grads).norm().item() == pytest.approx(limit, rel=1e-3), name


def test_default_clip_is_one_and_adam_has_torch_defaults(make_config):
    trainer = Trainer(make_config(max_steps=1))
    assert trainer.config.max_grad_norm == 1.0 == type(trainer.config)().max_grad_norm
    for optimizer, lr in ((trainer.student_optimizer, 1e-4), (trainer.lora_optimizer, 1e-3)):
        assert type(optimizer) is torch.optim.Adam
        (group,) = optimizer.param_groups
        assert group["lr"] == lr and group["betas"] == (0.9, 0.999)
        assert group["eps"] == 1e-8 and group["weight_decay"] == 0 and not group["amsgrad"]


def test_lora_trains_on_the_students_x0_from_before_its_update_detached(make_config, tmp_path, tap):
    trainer = Trainer(make_config(max_steps=1, output_dir=str(tmp_path / "order"), max_grad_norm=1e9))
    initial = {k: v.clone() for k, v in trainer.student_unet.state_dict().items()}
    seen = {}
    lora_loss = trainer.step_fn.lora_loss

    def recording_lora_loss(x0, text, draws):
        seen["x0"] = x0.detach().clone()
        seen["student_grads"] = [p.grad.clone() for p in trainer.student_unet.parameters()]
        seen["draws"] = draws
        seen["text"] = text
        return lora_loss(x0, text, draws)

    trainer.step_fn.lora_loss = recording_lora_loss
    trainer.fit()

    # x0 is the student's z_0 under its weights before the step.
    fresh = Trainer(make_config(max_steps=1, output_dir=str(tmp_path / "fresh")))
    fresh.student_unet.load_state_dict(initial)
    with torch.no_grad():
        _, x0 = fresh.step_fn.student_forward(seen["text"], seen["draws"])
    torch.testing.assert_close(seen["x0"], x0, rtol=1e-5, atol=1e-6)
    # The LoRA's backward added nothing to the student's gradients.
    (student_grads,) = tap.of(trainer.student_optimizer)
    for before_lora, stepped in zip(seen["student_grads"], student_grads):
        assert torch.equal(before_lora, stepped)


@pytest.mark.parametrize("init", ["default", "gaussian"])
def test_lora_initialisation(make_config, init):
    trainer = Trainer(make_config(max_steps=1, lora_init=init, lora_rank=4))
    weights = lora_state_dict(trainer.fake_score_unet)
    a = [v for k, v in weights.items() if "lora_A" in k]
    b = [v for k, v in weights.items() if "lora_B" in k]
    assert a and b and all(torch.count_nonzero(v) == 0 for v in b)  # the fake score starts as the teacher
    if init == "default":  # peft's default: A ~ Kaiming-uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        for v in a:
            bound = 1 / math.sqrt(v.shape[1])
            assert v.abs().max() <= bound and v.abs().max() > 0.8 * bound
    else:  # A ~ N(0, 1/rank)
        values = torch.cat([v.reshape(-1) for v in a])
        assert values.std().item() == pytest.approx(1 / 4, rel=0.15)
