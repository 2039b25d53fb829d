"""Stable Diffusion XL: two CLIP text encoders, pooled text embeddings and size/crop time ids (DESIGN.md section 2.3).

Everything else (prompts, retain sets, LoRA module names, one-step conventions) is Stable Diffusion's, so this
family extends `StableDiffusionFamily` where SDXL differs: the pipelines, the conditioning, and how the stock
pipeline samples.
"""

from __future__ import annotations

from sfd.core.families.sd import StableDiffusionFamily


class StableDiffusionXLFamily(StableDiffusionFamily):
    name = "sdxl"
    description = "Stable Diffusion XL"
    teacher_pipeline = "StableDiffusionXLPipeline"
    one_step_pipeline = "OneStepTextXLPipeline"
    single_file_layout = "sdxl"
    hub_tag = "stable-diffusion-xl"
    fallback_sampling = (40, 5.0)
    presets = ("sd", "shapes")  # SD's: the same VP convention and two-branch guidance

    def pipeline_types(self):
        from diffusers import StableDiffusionXLPipeline

        from sfd.pipelines import OneStepTextXLPipeline

        return StableDiffusionXLPipeline, OneStepTextXLPipeline

    def load_kwargs(self, cls) -> dict:
        return {}

    def stock_load_kwargs(self, pipe) -> str:
        return ""

    def text_encoders(self, pipe) -> list[tuple[str, object, object]]:
        return [("text_encoder", pipe.tokenizer, pipe.text_encoder), ("text_encoder_2", pipe.tokenizer_2, pipe.text_encoder_2)]

    def encode(self, pipe, prompts: list[str], device=None, grad: bool = False) -> dict:
        """SDXL's conditioning: both encoders' hidden states, the pooled embedding and the time ids of the model's size."""
        from sfd.pipelines.text_to_image_xl import encode_prompts_xl

        size = self.image_size(pipe)
        return encode_prompts_xl([pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2], prompts,
                                 (size, size), bool(pipe.config.get("force_zeros_for_empty_prompt", True)), device, grad)

    def one_step_pipeline_from(self, teacher, unet, convention):
        _, one_step_cls = self.pipeline_types()
        return one_step_cls(vae=teacher.vae, text_encoder=teacher.text_encoder, text_encoder_2=teacher.text_encoder_2,
                            tokenizer=teacher.tokenizer, tokenizer_2=teacher.tokenizer_2, unet=unet, scheduler=teacher.scheduler,
                            force_zeros_for_empty_prompt=bool(teacher.config.get("force_zeros_for_empty_prompt", True)),
                            **convention.config())
