"""Class-conditional pipelines: guidance, input checks, seeds, one-step output."""

import pytest
import torch
from diffusers import HeunDiscreteScheduler

from conftest import tiny_class_unet
from sfd.pipelines import ClassConditionalPipeline, OneStepClassPipeline
from sfd.core.worlds.digits import teacher_scheduler_config

NAMES = ["a", "b", "c"]


def pipe(guidance=2.0):
    return ClassConditionalPipeline(unet=tiny_class_unet(len(NAMES) + 1),
                                    scheduler=HeunDiscreteScheduler(**teacher_scheduler_config(), use_karras_sigmas=True),
                                    class_names=NAMES, default_guidance_scale=guidance, default_num_inference_steps=3)


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_null_class_and_guidance_change_samples():
    p = pipe()
    assert p.null_class == 3
    a = p([0, 1], generator=gens(2), show_progress=False).images
    b = p([0, 1], guidance_scale=1.0, generator=gens(2), show_progress=False).images
    c = p([0, 1], generator=gens(2), show_progress=False).images
    assert torch.equal(a, c) and not torch.allclose(a, b)


def test_per_sample_generators_make_samples_independent_of_batch():
    p = pipe()
    both = p([0, 2], generator=gens(2, 7), show_progress=False).images
    alone = p([2], generator=gens(1, 8), show_progress=False).images
    assert torch.allclose(both[1], alone[0], atol=1e-5)


@pytest.mark.parametrize("labels", [[3], [-1], []])
def test_labels_outside_the_named_classes_are_rejected(labels):
    with pytest.raises(ValueError):
        pipe()(labels, show_progress=False)


def test_one_step_pipeline_is_the_teachers_denoiser_at_sigma_init():
    p = pipe()
    one = OneStepClassPipeline(unet=p.unet, scheduler=p.scheduler, t_init=440, class_names=NAMES)
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s = one.sigma_init
    expected = (p.denoiser(s * z, s, {"class_labels": torch.tensor([0, 1])}) / 2 + 0.5).clamp(0, 1)
    got = one([0, 1], generator=torch.Generator().manual_seed(0)).images
    assert torch.allclose(got, expected, atol=1e-5)
