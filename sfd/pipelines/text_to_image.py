"""The one-step text-to-image generator that SFD distils from a Stable-Diffusion-style teacher.

`OneStepTextPipeline` registers the same components as `StableDiffusionPipeline` (text encoder,
tokenizer, VAE, UNet, scheduler) with the distilled generator in place of the UNet, and `t_init` in its
config: x0_latent = D_theta(sigma_init * z, sigma_init, text) in one UNet evaluation, decoded by the VAE.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from sfd.kernel.denoisers import Denoiser

from sfd.pipelines.class_conditional import OneStepCalls, register_convention, to_output  # noqa: F401 (to_output: imported from here)

MAX_PROMPT_CHARS = 1000


def encode_prompts(tokenizer, text_encoder, prompts: list[str], device=None, grad: bool = False) -> torch.Tensor:
    """Per-token text embeddings (the UNet's encoder_hidden_states), as Stable Diffusion computes them; without
    gradients unless `grad` (the attacks differentiate through the text encoder)."""
    device = device or text_encoder.device
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.set_grad_enabled(grad):
        return text_encoder(ids.to(device))[0]


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode to images in [0, 1] (SD3's and FLUX's VAEs also shift their latents)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def prompt_list(prompt: str | list[str], num_images_per_prompt: int, generator) -> list[str]:
    """The prompts of one call of a one-step text pipeline, each repeated num_images_per_prompt times; ValueError or
    TypeError with the reason for an empty, non-string or too long prompt, or a generator list of the wrong length."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
    if not prompts:
        raise ValueError("prompt is empty")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompts must be strings, got {type(p).__name__}")
        if len(p) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt longer than {MAX_PROMPT_CHARS} characters")
    if isinstance(generator, list) and len(generator) != len(prompts):
        raise ValueError(f"got {len(generator)} generators for {len(prompts)} images")
    return prompts


def one_step_images(pipe, prompts: list[str], generator, latents: torch.Tensor | None, output_type: str,
                    latent_shape: tuple[int, ...]) -> ImagePipelineOutput:
    """A one-step text pipeline's images: encode the prompts, draw the latents (unless given), one generator call,
    decode."""
    device = pipe._execution_device
    cond = pipe.encode_conditions(prompts, device)
    if latents is None:
        latents = randn_tensor((len(prompts), *latent_shape), generator=generator, device=device, dtype=torch.float32)
    x0 = pipe.generator(latents.to(device), cond)
    return ImagePipelineOutput(images=to_output(decode_latents(pipe.vae, x0), output_type))


class OneStepTextPipeline(OneStepCalls, DiffusionPipeline):
    """One-step text-to-image generator distilled by SFD; loads with `OneStepTextPipeline.from_pretrained`."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        t_init: int = 625,
        conditioning_timestep: float | None = None,
        input_scale: float | None = None,
        prediction_type: str | None = None,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.register_to_config(t_init=int(t_init))
        register_convention(self, conditioning_timestep, input_scale, prediction_type)

    @property
    def denoiser(self) -> Denoiser:
        return Denoiser.from_unet_and_scheduler_config(self.unet, self.scheduler.config)

    def encode_conditions(self, prompts: list[str], device=None) -> dict:
        """The network's keyword conditioning for `prompts`."""
        return {"encoder_hidden_states": encode_prompts(self.tokenizer, self.text_encoder, prompts, device or self._execution_device)}

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_images_per_prompt: int = 1, generator=None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", **ignored):
        """Generate images; sampler arguments of multi-step pipelines (steps, guidance) are accepted and ignored."""
        c, s = self.unet.config.in_channels, self.unet.config.sample_size
        return one_step_images(self, prompt_list(prompt, num_images_per_prompt, generator), generator, latents, output_type, (c, s, s))
