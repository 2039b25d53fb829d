"""Stable Diffusion 1.x/2.x (epsilon- or v-prediction latent UNets with one CLIP text encoder; the shapes world)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sfd.core.families.text import TextToImageFamily

if TYPE_CHECKING:
    import torch

    from sfd.kernel.generators import OneStepConvention


class StableDiffusionFamily(TextToImageFamily):
    single_file_layout = "sd"
    hub_tag = "stable-diffusion"
    name = "sd"
    description = "Stable Diffusion 1.x/2.x"
    teacher_pipeline = "StableDiffusionPipeline"
    one_step_pipeline = "OneStepTextPipeline"
    presets = ("sd", "shapes")

    def pipeline_types(self):
        from diffusers import StableDiffusionPipeline

        from sfd.pipelines import OneStepTextPipeline

        return StableDiffusionPipeline, OneStepTextPipeline

    def load_kwargs(self, cls) -> dict:
        """Extra from_pretrained arguments of the teacher pipeline: no safety checker (our detectors judge images)."""
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    # ----------------------------------------------------------------------------------------- training
    def encode(self, pipe, prompts: list[str], device=None, grad: bool = False) -> torch.Tensor:
        """Per-token text embeddings (the UNet's encoder_hidden_states), as Stable Diffusion computes them."""
        from sfd.pipelines.text_to_image import encode_prompts

        return encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts, device, grad)

    def text_encoders(self, pipe) -> list[tuple[str, object, object]]:
        return [("text_encoder", pipe.tokenizer, pipe.text_encoder)]

    def one_step_pipeline_from(self, teacher, unet, convention: OneStepConvention):
        _, one_step_cls = self.pipeline_types()
        return one_step_cls(vae=teacher.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer, unet=unet,
                            scheduler=teacher.scheduler, **convention.config())

    # ---------------------------------------------------------------------------------------- sampling
    def image_size(self, pipe) -> int:
        return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)

    def stock_load_kwargs(self, pipe) -> str:
        """Arguments of the stock teacher pipeline's from_pretrained that a one-step folder needs (none saved here)."""
        return ", safety_checker=None"

    def stock_call(self, pipe) -> tuple[str, str, dict] | None:
        """(scheduler class, the stock pipeline's scheduler as code, call arguments as code) that sample the generator in
        one step (DESIGN.md section 2.3): Euler from its noise level sigma_init to 0, guidance 1. SiD's convention only."""
        from sfd.kernel.generators import OneStepConvention

        if not OneStepConvention.from_config(pipe.config).is_sid:
            return None
        sigma, size = float(f"{self.generator(pipe).sigma_init:.9g}"), self.image_size(pipe)
        return ("EulerDiscreteScheduler", "EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing='trailing')",
                {"sigmas": f"[{sigma!r}, 0.0]", "guidance_scale": "1.0", "height": size, "width": size})

    def lora_targets(self) -> list[str]:
        # Attention, feed-forward and resnet layers, the module list of diffusers' LCM-LoRA training script.
        return ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]

    def save_lora(self, teacher, folder, state: dict, rank: int, targets: list[str]) -> None:
        """`lora/pytorch_lora_weights.safetensors` in diffusers' key format: `pipe.load_lora_weights(folder/lora)` on the
        teacher's pipeline (or `unet.load_lora_adapter`)."""
        teacher_cls, _ = self.pipeline_types()
        # peft's key names (lora_A / lora_B), which diffusers loads as they are; its older "lora.down" format lost
        # the attention layers on loading (measured: 94 of 158 tensors loaded).
        teacher_cls.save_lora_weights(str(folder / "lora"), unet_lora_layers=dict(state), safe_serialization=True)
