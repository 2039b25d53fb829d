"""The SFD losses, against DESIGN.md section 2 and the foundation issue's checklist."""

import pytest
import torch

from conftest import tiny_class_unet
from sfd.core.concepts import ClassForgetSpec
from sfd.core.config import SFDConfig
from sfd.kernel.denoisers import Denoiser
from sfd.kernel.errors import SFDError
from sfd.core.losses import Cond, fake_score_loss, generate, generator_loss, nearest_class
from sfd.kernel.schedules import DiscreteVPSchedule, betas_for
from sfd.core.trainer import SFDTrainer

NAMES = ("zero", "one", "two", "three")


def teacher():
    sched = DiscreteVPSchedule(torch.cumprod(1 - betas_for("linear", 1e-4, 0.02, 1000), 0))
    return Denoiser(tiny_class_unet(len(NAMES)), sched, "epsilon")


def small_config(**kw):
    base = dict(steps=2, batch_retain=4, batch_forget=4, seed=0, guidance_teacher=1.0)
    return SFDConfig(**{**base, **kw})


def test_generator_at_step_zero_equals_teachers_one_step_denoise():
    t = teacher()
    trainer = SFDTrainer(t, ClassForgetSpec.parse(NAMES, ["1"], "random"), small_config())
    z = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = Cond({"class_labels": torch.tensor([0, 1, 2, 3, 0, 1])})
    with torch.no_grad():
        x_g = generate(trainer.generator, z, cond)
        x_teacher = t(trainer.sigma_init * z, trainer.sigma_init, cond.cond)
    assert trainer.sigma_init == float(t.schedule.sigma_at(440))
    assert torch.allclose(x_g, x_teacher, atol=1e-5)


def test_generator_loss_is_per_sample_and_teacher_gets_no_parameter_gradient():
    t = teacher().requires_grad_(False)
    fake = teacher()
    gen = teacher()
    fake.requires_grad_(False)
    z = torch.randn(5, 1, 8, 8)
    x_g = gen(2.5 * z, 2.5, {"class_labels": torch.full((5,), 1)})
    loss = generator_loss(
        t, fake, x_g, torch.full((5,), 1.3), torch.randn(5, 1, 8, 8),
        teacher_cond=Cond({"class_labels": torch.full((5,), 2)}), fake_cond=Cond({"class_labels": torch.full((5,), 1)}), alpha=1.2,
    )
    assert loss.shape == (5,)
    loss.sum().backward()
    assert all(p.grad is None for p in t.parameters())
    assert all(p.grad is None for p in fake.parameters())
    assert sum(float(p.grad.abs().sum()) for p in gen.parameters() if p.grad is not None) > 0


def test_gradient_reaches_generator_through_teachers_input():
    """d loss / d x_g changes when the teacher's output is cut from the graph: the teacher's input carries gradient."""
    t = teacher().requires_grad_(False)
    fake = teacher().requires_grad_(False)
    torch.manual_seed(0)
    x_g = torch.randn(4, 1, 8, 8, requires_grad=True)
    sigma, noise = torch.full((4,), 0.8), torch.randn(4, 1, 8, 8)
    tc, fc = Cond({"class_labels": torch.full((4,), 2)}), Cond({"class_labels": torch.full((4,), 1)})

    grad_full, = torch.autograd.grad(generator_loss(t, fake, x_g, sigma, noise, tc, fc, 1.2).sum(), x_g)

    class Detached(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.d = d

        def forward(self, *a, **k):
            return self.d(*a, **k).detach()

    grad_cut, = torch.autograd.grad(generator_loss(Detached(t), fake, x_g, sigma, noise, tc, fc, 1.2).sum(), x_g)
    assert (grad_full - grad_cut).abs().max() > 1e-4


def test_retain_term_vanishes_when_fake_equals_teacher():
    t = teacher()
    x_g = torch.randn(3, 1, 8, 8)
    c = Cond({"class_labels": torch.tensor([0, 2, 3])})
    loss = generator_loss(t, t, x_g, torch.full((3,), 1.0), torch.randn_like(x_g), c, c, alpha=1.2)
    assert torch.allclose(loss, torch.zeros(3), atol=1e-6)


def test_fake_score_loss_is_epsilon_mse_for_epsilon_teacher():
    f = teacher()
    x_g, n = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    sigma = torch.tensor([0.5, 3.0])
    c = Cond({"class_labels": torch.tensor([0, 1])})
    loss = fake_score_loss(f, x_g, sigma, n, c)
    s = sigma.view(-1, 1, 1, 1)
    x_t = x_g + s * n
    eps_hat = f.unet(x_t / (1 + s**2).sqrt(), f.schedule.sigma_to_t(sigma), class_labels=c.cond["class_labels"]).sample
    assert torch.allclose(loss, (eps_hat - n).pow(2).mean((1, 2, 3)), rtol=1e-4, atol=1e-6)


def _record_labels(denoiser):
    seen = []
    denoiser.unet.register_forward_pre_hook(lambda m, a, k: seen.append(k["class_labels"].clone()), with_kwargs=True)
    return seen


def test_forgetting_term_evaluates_teacher_at_override_class():
    spec = ClassForgetSpec.parse(NAMES, ["one"], "three")
    trainer = SFDTrainer(teacher(), spec, small_config(batch_retain=3, batch_forget=5))
    teacher_seen, fake_seen = _record_labels(trainer.teacher), _record_labels(trainer.fake)
    trainer.generator_step()
    t_labels, f_labels = teacher_seen[-1], fake_seen[-1]
    assert t_labels[3:].tolist() == [3] * 5  # forget half: teacher at the override class
    assert f_labels[3:].tolist() == [1] * 5  # ... the fake score at the forget class
    assert torch.equal(t_labels[:3], f_labels[:3]) and 1 not in t_labels[:3].tolist()  # retain half: same retained class


def test_random_override_must_be_resolved_to_retained_classes():
    spec = ClassForgetSpec.parse(NAMES, ["1", "two"], "random")
    with pytest.raises(ValueError, match="resolved"):
        spec.sample(4, 4, torch.Generator().manual_seed(0), "cpu")
    with pytest.raises(ValueError):
        spec.with_random_targets([0, 1])  # 1 is a forget class
    b = spec.with_random_targets([3, 0]).sample(50, 200, torch.Generator().manual_seed(0), "cpu")
    fake, teacher_labels = b.fake.cond["class_labels"][50:], b.teacher.cond["class_labels"][50:]
    assert set(fake.tolist()) == {1, 2}
    assert teacher_labels[fake == 1].unique().tolist() == [3] and teacher_labels[fake == 2].unique().tolist() == [0]


def test_nearest_class_picks_the_candidate_whose_denoise_is_closest():
    # A stand-in teacher that denoises everything to its class's constant image c * 1.
    def stub(x, sigma, cond):
        return cond["class_labels"].float().view(-1, 1, 1, 1).expand_as(x)

    x_g = torch.stack([torch.full((1, 4, 4), v) for v in (2.9, 0.4, 4.6)])
    noise = torch.randn_like(x_g)
    assert nearest_class(stub, x_g, 1.0, noise, (0, 3, 5)).tolist() == [3, 0, 5]
    assert nearest_class(stub, x_g, 1.0, noise, (0, 5)).tolist() == [5, 0, 5]


def test_random_override_is_the_nearest_retained_class_chosen_once_per_run():
    spec = ClassForgetSpec.parse(NAMES, ["one"], "random")
    t = teacher()
    seen = _record_labels(t)
    trainer = SFDTrainer(t, spec, small_config(batch_retain=3, batch_forget=5))
    # The choice: the teacher's step-0 sample of class 1, then every retained class for the nearest-class vote.
    assert seen[0].unique().tolist() == [1] and sorted(seen[1].unique().tolist()) == [0, 2, 3]
    (target,) = trainer.spec.random_targets
    assert target in (0, 2, 3)
    assert trainer.spec.describe()["override_chosen"] == f"one -> {NAMES[target]}"
    teacher_seen, fake_seen = _record_labels(trainer.teacher), _record_labels(trainer.fake)
    trainer.generator_step()
    trainer.generator_step()
    for t_labels, f_labels in zip(teacher_seen, fake_seen):
        assert t_labels[3:].tolist() == [target] * 5 and f_labels[3:].tolist() == [1] * 5


def test_training_steps_change_generator_and_fake_but_not_teacher():
    trainer = SFDTrainer(teacher(), ClassForgetSpec.parse(NAMES, ["1"], "0"), small_config())
    before_t = [p.clone() for p in trainer.teacher.parameters()]
    before_g = [p.clone() for p in trainer.generator.parameters()]
    trainer.train(progress=False)
    assert trainer.step_count == 2
    assert all(torch.equal(a, b) for a, b in zip(before_t, trainer.teacher.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, trainer.generator.parameters()))


def test_same_seed_gives_identical_weights():
    def run():
        tr = SFDTrainer(teacher(), ClassForgetSpec.parse(NAMES, ["1"], "random"), small_config(steps=2))
        tr.train(progress=False)
        return tr.ema_unet().state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_guided_teacher_uses_null_class_for_unconditional_branch():
    sched = DiscreteVPSchedule(torch.cumprod(1 - betas_for("linear", 1e-4, 0.02, 1000), 0))
    guided_teacher = Denoiser(tiny_class_unet(len(NAMES) + 1), sched, "epsilon")
    spec = ClassForgetSpec.parse(NAMES, ["1"], "2", null_class=len(NAMES))
    trainer = SFDTrainer(guided_teacher, spec, small_config(guidance_teacher=2.0, batch_retain=2, batch_forget=3))
    teacher_seen, fake_seen = _record_labels(trainer.teacher), _record_labels(trainer.fake)
    trainer.generator_step()
    t_labels, f_labels = teacher_seen[-1].tolist(), fake_seen[-1].tolist()
    assert t_labels[:5] == [4] * 5  # unconditional half of the guided batch
    assert t_labels[5 + 2:] == [2] * 3  # conditional half: override class on the forget samples
    assert f_labels[2:] == [1] * 3 and len(f_labels) == 5  # fake score unguided (guidance_fake_eval = 1)


def test_micro_batches_accumulate_the_same_update_as_one_batch():
    """Gradient accumulation in 2 parts gives the one-batch weights (up to float summation order)."""
    def run(m):
        tr = SFDTrainer(teacher(), ClassForgetSpec.parse(NAMES, ["1"], "2"), small_config(steps=2, micro_batches=m))
        tr.train(progress=False)
        return tr.ema_unet().state_dict()

    a, b = run(1), run(2)
    diff = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    # As across processes (test_reliability): Adam with beta1 = 0 turns a gradient near 0 into a step of about
    # +-lr whatever its sign, so a summation-order difference can flip one element's step (<= 2 lr); the rest agrees.
    assert float(diff.max()) <= 2 * small_config().lr_generator, float(diff.max())
    assert float((diff > 1e-6).float().mean()) < 0.01
    with pytest.raises(SFDError, match="micro-batches"):
        SFDTrainer(teacher(), ClassForgetSpec.parse(NAMES, ["1"], "2"), small_config(batch_retain=3, micro_batches=2))
