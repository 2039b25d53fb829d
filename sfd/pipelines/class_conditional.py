"""Class-conditional pipelines: the multi-step teacher sampler and the one-step SFD generator.

Both register a `UNet2DModel` with class embeddings and a discrete scheduler, so they save and load
with diffusers' `save_pretrained` / `from_pretrained` (safetensors).  Images are returned in [0, 1].
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor

from sfd.kernel.denoisers import Denoiser
from sfd.kernel.generators import OneStepConvention, OneStepGenerator


def _labels(class_labels, device) -> torch.Tensor:
    return torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)


def _to_output(x: torch.Tensor, output_type: str):
    return to_output((x.float() / 2 + 0.5).clamp(0, 1), output_type)


def to_output(images: torch.Tensor, output_type: str):
    """Images in [0, 1] (NCHW) as the pipelines' output_type asks: "pt", "np" (NHWC) or "pil"."""
    if output_type == "pt":
        return images
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return arr
    if output_type == "pil":
        return DiffusionPipeline.numpy_to_pil(arr)
    raise ValueError(f"output_type must be 'pt', 'np' or 'pil', got {output_type!r}")


class OneStepCalls:
    """What every one-step pipeline gives: its network (`denoiser`) as the one-step generator, called by the convention
    its folder records (`register_convention`)."""

    @property
    def generator(self) -> OneStepGenerator:
        """The distilled network as called by this folder's one-step convention (SiD's: t_init)."""
        return OneStepGenerator(self.denoiser, OneStepConvention.from_config(self.config))

    @property
    def sigma_init(self) -> float:
        return self.generator.sigma_init


class _ClassPipelineBase(DiffusionPipeline):
    model_cpu_offload_seq = "unet"

    @property
    def null_class(self) -> int | None:
        """Index of the 'no class' embedding used for classifier-free guidance, if the UNet has one."""
        n = len(self.config.class_names)
        return n if self.unet.config.num_class_embeds > n else None

    def _check(self, labels: torch.Tensor, generator) -> None:
        n = len(self.config.class_names)
        if labels.numel() == 0:
            raise ValueError("class_labels is empty")
        if labels.min() < 0 or labels.max() >= n:
            raise ValueError(f"class labels must lie in [0, {n - 1}], got {labels.tolist()}")
        if isinstance(generator, list) and len(generator) != labels.numel():
            raise ValueError(f"got {len(generator)} generators for {labels.numel()} labels")

    def _noise(self, n: int, generator) -> torch.Tensor:
        c, s = self.unet.config.in_channels, self.unet.config.sample_size
        shape = (n, c, s, s)
        return randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)

    @property
    def denoiser(self) -> Denoiser:
        return Denoiser.from_unet_and_scheduler_config(self.unet, self.scheduler.config)


class ClassConditionalPipeline(_ClassPipelineBase):
    """Multi-step sampler of a class-conditional diffusion model (the teacher)."""

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: KarrasDiffusionSchedulers,
        class_names: list[str] | None = None,
        default_guidance_scale: float = 1.0,
        default_num_inference_steps: int = 18,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        names = list(class_names) if class_names else [str(i) for i in range(unet.config.num_class_embeds)]
        self.register_to_config(class_names=names, default_guidance_scale=float(default_guidance_scale),
                                default_num_inference_steps=int(default_num_inference_steps))

    @torch.no_grad()
    def __call__(
        self,
        class_labels,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator=None,
        output_type: str = "pt",
        show_progress: bool = True,
    ):
        """Sample with the folder's scheduler; classifier-free guidance when the UNet has a null-class embedding."""
        labels = _labels(class_labels, self.device)
        self._check(labels, generator)
        steps = num_inference_steps or self.config.default_num_inference_steps
        scale = self.config.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        guide = self.null_class is not None and scale != 1.0
        if guide:
            labels_in = torch.cat([torch.full_like(labels, self.null_class), labels])
        self.scheduler.set_timesteps(steps, device=self.device)
        x = self._noise(labels.numel(), generator) * self.scheduler.init_noise_sigma
        self.set_progress_bar_config(disable=not show_progress)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(x, t).to(self.unet.dtype)
            if guide:
                out_u, out_c = self.unet(torch.cat([model_in, model_in]), t, class_labels=labels_in, return_dict=False)[0].float().chunk(2)
                out = out_u + scale * (out_c - out_u)
            else:
                out = self.unet(model_in, t, class_labels=labels, return_dict=False)[0].float()
            x = self.scheduler.step(out, t, x, return_dict=False)[0]
        return ImagePipelineOutput(images=_to_output(x, output_type))


class OneStepClassPipeline(OneStepCalls, _ClassPipelineBase):
    """One-step generator x = D_theta(sigma_init * z, sigma_init, c) distilled by SFD (DESIGN.md section 2).

    `t_init` is the generator's timestep; `conditioning_timestep`, `input_scale` and `prediction_type` record
    another calling convention for one-step networks made elsewhere (`sfd.kernel.generators.OneStepConvention`)."""

    def __init__(self, unet: UNet2DModel, scheduler: KarrasDiffusionSchedulers, t_init: int = 440, class_names: list[str] | None = None,
                 conditioning_timestep: float | None = None, input_scale: float | None = None, prediction_type: str | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(t_init=int(t_init), class_names=list(class_names) if class_names else [str(i) for i in range(unet.config.num_class_embeds)])
        register_convention(self, conditioning_timestep, input_scale, prediction_type)

    @torch.no_grad()
    def __call__(self, class_labels, generator=None, output_type: str = "pt", num_inference_steps: int = 1, show_progress: bool = False):
        labels = _labels(class_labels, self.device)
        self._check(labels, generator)
        z = self._noise(labels.numel(), generator)
        x = self.generator(z, {"class_labels": labels})
        return ImagePipelineOutput(images=_to_output(x, output_type))


def register_convention(pipe: DiffusionPipeline, conditioning_timestep, input_scale, prediction_type) -> None:
    """Record a one-step calling convention other than SiD's in the pipeline config (SiD's needs t_init alone)."""
    extra = {"conditioning_timestep": conditioning_timestep, "input_scale": input_scale, "prediction_type": prediction_type}
    extra = {k: v for k, v in extra.items() if v is not None}
    if extra:
        pipe.register_to_config(**extra)
