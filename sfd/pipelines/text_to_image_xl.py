"""The one-step generator that SFD distils from a Stable Diffusion XL teacher.

`OneStepTextXLPipeline` registers the components of `StableDiffusionXLPipeline` (two CLIP text encoders and
tokenizers, VAE, UNet, scheduler) with the distilled generator in place of the UNet, and its one-step convention
in the config. SDXL's conditioning (DESIGN.md section 2.3): the penultimate hidden states of both encoders
concatenated, the second encoder's pooled (projected) embedding, and `add_time_ids` (original size, crop
top-left, target size), passed as the UNet's `added_cond_kwargs`.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sfd.kernel.denoisers import Denoiser

from sfd.pipelines.class_conditional import OneStepCalls, register_convention
from sfd.pipelines.text_to_image import one_step_images, prompt_list


def encode_prompts_xl(tokenizers, text_encoders, prompts: list[str], size: tuple[int, int], zero_empty: bool = True,
                      device=None, grad: bool = False) -> dict:
    """SDXL's UNet conditioning of `prompts` at image size (height, width), as StableDiffusionXLPipeline computes it
    (clip_skip None); with `zero_empty` (the model's force_zeros_for_empty_prompt), "" is all zeros, its
    unconditional branch. Without gradients unless `grad`."""
    with torch.set_grad_enabled(grad):
        return _encode_xl(tokenizers, text_encoders, prompts, size, zero_empty, device)


def _encode_xl(tokenizers, text_encoders, prompts: list[str], size: tuple[int, int], zero_empty: bool, device) -> dict:
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        out = encoder(ids.to(device or encoder.device), output_hidden_states=True)
        if pooled is None and out[0].ndim == 2:  # CLIPTextModelWithProjection: the projected pooled embedding
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    emb = torch.cat(hidden, dim=-1)
    if zero_empty:
        empty = torch.tensor([p == "" for p in prompts], device=emb.device)
        emb = torch.where(empty.view(-1, 1, 1), torch.zeros_like(emb), emb)
        pooled = torch.where(empty.view(-1, 1), torch.zeros_like(pooled), pooled)
    h, w = size
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=emb.dtype, device=emb.device).expand(len(prompts), -1)
    return {"encoder_hidden_states": emb, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


class OneStepTextXLPipeline(OneStepCalls, DiffusionPipeline):
    """One-step SDXL-family text-to-image generator distilled by SFD; loads with `OneStepTextXLPipeline.from_pretrained`."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        t_init: int = 625,
        force_zeros_for_empty_prompt: bool = True,
        conditioning_timestep: float | None = None,
        input_scale: float | None = None,
        prediction_type: str | None = None,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
        self.register_to_config(t_init=int(t_init), force_zeros_for_empty_prompt=bool(force_zeros_for_empty_prompt))
        register_convention(self, conditioning_timestep, input_scale, prediction_type)

    @property
    def denoiser(self) -> Denoiser:
        return Denoiser.from_unet_and_scheduler_config(self.unet, self.scheduler.config)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale_factor

    def encode_conditions(self, prompts: list[str], device=None) -> dict:
        return encode_prompts_xl([self.tokenizer, self.tokenizer_2], [self.text_encoder, self.text_encoder_2], prompts,
                                 (self.image_size, self.image_size), self.config.force_zeros_for_empty_prompt,
                                 device or self._execution_device)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_images_per_prompt: int = 1, generator=None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", **ignored):
        """Generate images; sampler arguments of multi-step pipelines (steps, guidance, size) are accepted and ignored."""
        c, s = self.unet.config.in_channels, self.unet.config.sample_size
        return one_step_images(self, prompt_list(prompt, num_images_per_prompt, generator), generator, latents, output_type, (c, s, s))
