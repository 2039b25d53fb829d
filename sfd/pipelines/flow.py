"""One-step generators that SFD distils from rectified-flow teachers: SD3 / SD3.5 and FLUX.1 (DESIGN.md section 2.3).

Both subclass the stock diffusers pipeline of their teacher, so prompt encoding (three text encoders for SD3; CLIP
pooled + T5 for FLUX), latent packing and position ids are diffusers' own; `__call__` is one network evaluation
under the folder's one-step convention. The `*_velocity` functions say how each family's transformer is called:
they are what `sfd.kernel.denoisers.FlowDenoiser` evaluates.
"""

from __future__ import annotations

import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from sfd.kernel.denoisers import FlowDenoiser
from sfd.kernel.generators import OneStepConvention
from sfd.kernel.schedules import FlowSchedule

from sfd.pipelines.class_conditional import OneStepCalls, register_convention
from sfd.pipelines.text_to_image import one_step_images, prompt_list

# A flow generator is called at t = 0.999 on pure noise: what the stock FlowMatchEulerDiscreteScheduler does in one
# step from sigma 0.999 with shift 1 (SiD-DiT distils from --init_timestep 999).
FLOW_CONVENTION = OneStepConvention(999.0, 1.0)


def sd3_velocity(net, x_t: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
    """SD3Transformer2DModel: v from latents x_t, diffusers' timestep 1000 t, the joint text sequence and pooled projections."""
    return net(hidden_states=x_t, timestep=timestep, encoder_hidden_states=cond["encoder_hidden_states"],
               pooled_projections=cond["pooled_projections"], return_dict=False)[0]


def flux_velocity(net, x_t: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
    """FluxTransformer2DModel: latents packed into 2x2 patches with image position ids, text ids of zeros, t in [0, 1]
    (the transformer scales it by 1000 itself) and, for guidance-distilled models, the guidance scale."""
    b, c, h, w = x_t.shape
    packed = FluxPipeline._pack_latents(x_t, b, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x_t.device, x_t.dtype)
    text = cond["encoder_hidden_states"]
    txt_ids = torch.zeros(text.shape[1], 3, device=x_t.device, dtype=x_t.dtype)
    out = net(hidden_states=packed, timestep=timestep / 1000, guidance=cond.get("guidance"), pooled_projections=cond["pooled_projections"],
              encoder_hidden_states=text, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
    return FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)  # nominal 8-pixel latents: the inverse of the packing


class _OneStepFlow(OneStepCalls):
    """What the two one-step flow pipelines share: the generator, its noise, one evaluation, VAE decoding."""

    velocity = None  # the family's network call
    latent_channels_attr = "in_channels"

    def flow_denoiser(self) -> FlowDenoiser:
        cfg = self.transformer.config
        guided = bool(getattr(cfg, "guidance_embeds", False))
        return FlowDenoiser(self.transformer, FlowSchedule.from_scheduler_config(self.scheduler.config), type(self).velocity,
                            guidance_embedded=guided, default_guidance=self.config.get("generator_guidance"))

    @property
    def denoiser(self) -> FlowDenoiser:
        return self.flow_denoiser()

    def latent_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    @torch.no_grad()
    def one_step(self, prompt, num_images_per_prompt: int = 1, generator=None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", **ignored):
        """Generate images; sampler arguments of multi-step pipelines (steps, guidance, size) are accepted and ignored."""
        return one_step_images(self, prompt_list(prompt, num_images_per_prompt, generator), generator, latents, output_type,
                               self.latent_shape())


class OneStepSD3Pipeline(_OneStepFlow, StableDiffusion3Pipeline):
    """One-step SD3 / SD3.5 generator distilled by SFD; loads with `OneStepSD3Pipeline.from_pretrained`."""

    velocity = staticmethod(sd3_velocity)
    # T5 may be absent (diffusers' T5-free SD3, the SD3-structured shapes world): such a folder then loads as it was saved.
    _optional_components = [*StableDiffusion3Pipeline._optional_components, "text_encoder_3", "tokenizer_3"]

    def __init__(self, transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, text_encoder_3=None,
                 tokenizer_3=None, image_encoder=None, feature_extractor=None, t_init: int = 999, max_sequence_length: int = 256,
                 conditioning_timestep: float | None = 999.0, input_scale: float | None = 1.0, prediction_type: str | None = None):
        super().__init__(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                         text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
                         tokenizer_3=tokenizer_3, image_encoder=image_encoder, feature_extractor=feature_extractor)
        self.register_to_config(t_init=int(t_init), max_sequence_length=int(max_sequence_length))
        register_convention(self, conditioning_timestep, input_scale, prediction_type)

    def latent_shape(self) -> tuple[int, int, int]:
        cfg = self.transformer.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    def encode_conditions(self, prompts: list[str], device=None) -> dict:
        return encode_sd3(self, prompts, device, self.config.max_sequence_length)

    __call__ = _OneStepFlow.one_step


class OneStepFluxPipeline(_OneStepFlow, FluxPipeline):
    """One-step FLUX.1 generator distilled by SFD; loads with `OneStepFluxPipeline.from_pretrained`."""

    velocity = staticmethod(flux_velocity)

    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer, image_encoder=None,
                 feature_extractor=None, t_init: int = 999, max_sequence_length: int = 512, sample_size: int = 128,
                 generator_guidance: float | None = None, conditioning_timestep: float | None = 999.0, input_scale: float | None = 1.0,
                 prediction_type: str | None = None):
        super().__init__(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                         tokenizer_2=tokenizer_2, transformer=transformer, image_encoder=image_encoder, feature_extractor=feature_extractor)
        self.register_to_config(t_init=int(t_init), max_sequence_length=int(max_sequence_length), sample_size=int(sample_size),
                                generator_guidance=generator_guidance)
        register_convention(self, conditioning_timestep, input_scale, prediction_type)

    def latent_shape(self) -> tuple[int, int, int]:
        s = self.config.sample_size
        return (self.transformer.config.in_channels // 4, s, s)

    def encode_conditions(self, prompts: list[str], device=None) -> dict:
        return encode_flux(self, prompts, device, self.config.max_sequence_length)

    __call__ = _OneStepFlow.one_step


def encode_sd3(pipe, prompts: list[str], device=None, max_sequence_length: int = 256, grad: bool = False) -> dict:
    """SD3's transformer conditioning of `prompts` (CLIP-L + CLIP-G + T5 sequence, pooled CLIP projections), by the stock
    pipeline's encode_prompt; without gradients unless `grad`."""
    with torch.set_grad_enabled(grad):
        emb, _, pooled, _ = StableDiffusion3Pipeline.encode_prompt(pipe, prompts, None, None, device=device or pipe._execution_device,
                                                                   do_classifier_free_guidance=False,
                                                                   max_sequence_length=max_sequence_length)
    return {"encoder_hidden_states": emb, "pooled_projections": pooled}


def encode_flux(pipe, prompts: list[str], device=None, max_sequence_length: int = 512, grad: bool = False) -> dict:
    """FLUX's transformer conditioning (T5 sequence, CLIP pooled embedding), by the stock pipeline's encode_prompt;
    without gradients unless `grad`."""
    with torch.set_grad_enabled(grad):
        emb, pooled, _ = FluxPipeline.encode_prompt(pipe, prompts, None, device=device or pipe._execution_device,
                                                    max_sequence_length=max_sequence_length)
    return {"encoder_hidden_states": emb, "pooled_projections": pooled}
