"""Rectified-flow transformer families: SD3 / SD3.5 and FLUX.1 (DESIGN.md section 2.3).

Their networks predict velocities on x_t = (1 - t) x0 + t eps; `FlowDenoiser` turns them into SFD's x0-denoisers
in sigma space. Prompts, retain sets and guidance branches are those of every text-to-image family
(`TextToImageFamily`, sfd/core/families/text.py); what differs is the transformer and how it is called, the text
encoders, and the one-step convention (pure noise at t = 0.999, as SiD-DiT's --init_timestep 999 and the stock
one-step FlowMatchEuler sampler).
"""

from __future__ import annotations

from sfd.kernel.errors import SFDError
from sfd.core.families.text import TextToImageFamily

# Attention (image and text streams), feed-forward: diffusers' SD3 / FLUX LoRA training scripts adapt these.
FLOW_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                     "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]


class _FlowFamily(TextToImageFamily):
    network_name = "transformer"
    max_sequence_length = 256

    def load(self, path: str, device: str = "cpu", allow_pickle: bool = False, dtype=None, resolution: int | None = None):
        """As every text-to-image family's; a teacher whose sfd_world.json records `max_sequence_length` (a world trained
        with a short T5 slot) keeps it (as `pipe.sfd_max_sequence_length`: a teacher pipeline's config takes no new
        keys), so that its prompts are encoded, and it is sampled, as it was trained."""
        pipe = super().load(path, device, allow_pickle, dtype, resolution)
        from sfd.core.models import world_meta

        n = world_meta(path).get("max_sequence_length") if not self.is_one_step(pipe) else None
        if n:
            pipe.sfd_max_sequence_length = int(n)
        return pipe

    def sequence_length(self, pipe) -> int:
        """The T5 sequence length prompts are encoded at: the one-step folder's, a world teacher's, else the family's."""
        n = pipe.config.get("max_sequence_length") or getattr(pipe, "sfd_max_sequence_length", None)
        return int(n or self.max_sequence_length)

    def sampler_kwargs(self, pipe) -> dict:
        return {} if self.is_one_step(pipe) else {"max_sequence_length": self.sequence_length(pipe)}

    def default_convention(self, t_init: int):
        from sfd.kernel.generators import OneStepConvention

        return OneStepConvention(float(t_init), 1.0)

    def velocity(self):
        raise NotImplementedError

    def teacher_denoiser(self, pipe):
        from sfd.kernel.denoisers import FlowDenoiser
        from sfd.kernel.schedules import FlowSchedule

        return FlowDenoiser(self.network(pipe), FlowSchedule.from_scheduler_config(pipe.scheduler.config), self.velocity())

    def image_size(self, pipe) -> int:
        return int(self.latent_shape(pipe)[-1] * pipe.vae_scale_factor)

    def lora_targets(self) -> list[str]:
        return list(FLOW_LORA_TARGETS)

    def save_lora(self, teacher, folder, state: dict, rank: int, targets: list[str]) -> None:
        teacher_cls, _ = self.pipeline_types()
        teacher_cls.save_lora_weights(str(folder / "lora"), transformer_lora_layers=dict(state), safe_serialization=True)

    def stock_load_kwargs(self, pipe) -> str:
        """Components the folder saved as None (an SD3 world without T5) are passed as None, as diffusers wants."""
        return "".join(f", {name}=None" for name in pipe.components if getattr(pipe, name) is None)

    def stock_guidance(self, pipe) -> float:
        return 1.0

    def stock_call(self, pipe) -> tuple[str, str, dict] | None:
        """Stock flow pipelines start from pure noise: one Euler step from t = timestep / 1000 reproduces generators
        called on z (input scale 1), with the folder's T5 length and size."""
        from sfd.kernel.generators import OneStepConvention

        conv = OneStepConvention.from_config(pipe.config)
        if conv.input_scale != 1.0:
            return None
        size = self.image_size(pipe)
        return ("FlowMatchEulerDiscreteScheduler",
                "FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=1.0, use_dynamic_shifting=False)",
                {"sigmas": f"[{conv.timestep / 1000!r}]", "num_inference_steps": 1, "guidance_scale": repr(self.stock_guidance(pipe)),
                 "height": size, "width": size, "max_sequence_length": self.sequence_length(pipe)})


class StableDiffusion3Family(_FlowFamily):
    name = "sd3"
    description = "Stable Diffusion 3 / 3.5"
    teacher_pipeline = "StableDiffusion3Pipeline"
    one_step_pipeline = "OneStepSD3Pipeline"
    hub_tag = "stable-diffusion-3"
    fallback_sampling = (28, 7.0)
    presets = ("sd3", "shapes-sd3")

    def pipeline_types(self):
        from diffusers import StableDiffusion3Pipeline

        from sfd.pipelines import OneStepSD3Pipeline

        return StableDiffusion3Pipeline, OneStepSD3Pipeline

    def velocity(self):
        from sfd.pipelines.flow import sd3_velocity

        return sd3_velocity

    def encode(self, pipe, prompts: list[str], device=None, grad: bool = False) -> dict:
        from sfd.pipelines.flow import encode_sd3

        return encode_sd3(pipe, prompts, device, self.sequence_length(pipe), grad)

    def text_encoders(self, pipe) -> list[tuple[str, object, object]]:
        """CLIP-L, CLIP-G and T5 (when the folder has one: a T5-free SD3 encodes zeros in its place)."""
        names = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3"))
        return [(e, getattr(pipe, t), getattr(pipe, e)) for e, t in names if getattr(pipe, e, None) is not None]

    def one_step_pipeline_from(self, teacher, network, convention):
        _, one_step_cls = self.pipeline_types()
        return one_step_cls(transformer=network, scheduler=teacher.scheduler, vae=teacher.vae, text_encoder=teacher.text_encoder,
                            tokenizer=teacher.tokenizer, text_encoder_2=teacher.text_encoder_2, tokenizer_2=teacher.tokenizer_2,
                            text_encoder_3=teacher.text_encoder_3, tokenizer_3=teacher.tokenizer_3,
                            max_sequence_length=self.sequence_length(teacher), **convention.config())


class FluxFamily(_FlowFamily):
    """FLUX.1: CLIP pooled + T5 conditioning, packed 2x2 latents; FLUX.1-dev is guidance-distilled, so its guidance
    scale is a network input (in the teacher and the fake score) instead of two branches."""

    name = "flux"
    description = "FLUX.1"
    teacher_pipeline = "FluxPipeline"
    one_step_pipeline = "OneStepFluxPipeline"
    fallback_sampling = (28, 3.5)
    presets = ("flux",)
    max_sequence_length = 512
    generator_guidance = 3.5  # FLUX.1-dev's default guidance: the embedding the one-step generator is called with

    def pipeline_types(self):
        from diffusers import FluxPipeline

        from sfd.pipelines import OneStepFluxPipeline

        return FluxPipeline, OneStepFluxPipeline

    def load(self, path: str, device: str = "cpu", allow_pickle: bool = False, dtype=None, resolution: int | None = None):
        """As every text-to-image family's; FLUX has no fixed sample size: `resolution` (pixels, a multiple of twice the
        VAE factor: latents are packed in 2x2 patches), else a world's sfd_world.json `image_size`, else the pipeline's
        default (1024 px: 128x128 latents, 4,096 tokens, whatever the network's size) sets it, and the one-step folder
        records it."""
        pipe = super().load(path, device, allow_pickle, dtype)
        from sfd.core.models import world_meta

        size = world_meta(path).get("image_size") if not self.is_one_step(pipe) else None
        if resolution is not None:
            factor = 2 * pipe.vae_scale_factor
            if resolution < factor or resolution % factor:
                raise SFDError(f"--resolution {resolution} must be a multiple of {factor} (twice the VAE's factor: FLUX packs "
                               "2x2 latent patches)")
            size = resolution
        if size:
            pipe.default_sample_size = int(size) // pipe.vae_scale_factor
        return pipe

    def velocity(self):
        from sfd.pipelines.flow import flux_velocity

        return flux_velocity

    def stock_guidance(self, pipe) -> float:
        """A guidance-embedded transformer (FLUX.1-dev) is sampled at the guidance its one-step generator is called with
        (`generator_guidance`): FluxPipeline's guidance_scale is that embedding, not a second branch."""
        embedded = bool(getattr(self.network(pipe).config, "guidance_embeds", False))
        return float(pipe.config.get("generator_guidance") or self.generator_guidance) if embedded else 1.0

    def teacher_denoiser(self, pipe):
        d = super().teacher_denoiser(pipe)
        d.guidance_embedded = bool(getattr(self.network(pipe).config, "guidance_embeds", False))
        d.default_guidance = pipe.config.get("generator_guidance") or self.generator_guidance
        return d

    def latent_shape(self, pipe) -> tuple[int, ...]:
        s = pipe.config.get("sample_size") if self.is_one_step(pipe) else pipe.default_sample_size
        return (self.network(pipe).config.in_channels // 4, int(s), int(s))

    def encode(self, pipe, prompts: list[str], device=None, grad: bool = False) -> dict:
        from sfd.pipelines.flow import encode_flux

        return encode_flux(pipe, prompts, device, self.sequence_length(pipe), grad)

    def text_encoders(self, pipe) -> list[tuple[str, object, object]]:
        """CLIP (its pooled embedding) and T5 (the token sequence)."""
        return [("text_encoder", pipe.tokenizer, pipe.text_encoder), ("text_encoder_2", pipe.tokenizer_2, pipe.text_encoder_2)]

    def one_step_pipeline_from(self, teacher, network, convention):
        _, one_step_cls = self.pipeline_types()
        return one_step_cls(scheduler=teacher.scheduler, vae=teacher.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer,
                            text_encoder_2=teacher.text_encoder_2, tokenizer_2=teacher.tokenizer_2, transformer=network,
                            sample_size=self.latent_shape(teacher)[-1], generator_guidance=self.generator_guidance,
                            max_sequence_length=self.sequence_length(teacher), **convention.config())
