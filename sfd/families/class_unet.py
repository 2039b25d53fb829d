"""Class-conditional UNet2D models (the paper's label-conditional DDPM setting; the digits world)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ..errors import SFDError
from .base import ModelFamily, first_line

if TYPE_CHECKING:
    import torch

    from ..generators import OneStepConvention


class ClassUNetFamily(ModelFamily):
    name = "class-unet"
    description = "class-conditional UNet2D"
    teacher_pipeline = "ClassConditionalPipeline"
    one_step_pipeline = "OneStepClassPipeline"
    condition_kind = "class"
    metrics = "judge"

    def load(self, path: str, device: str = "cpu", allow_pickle: bool = False, dtype: torch.dtype | None = None):
        import torch

        from pipelines import ClassConditionalPipeline, OneStepClassPipeline

        from ..models import check_weights_are_safe, model_kind, quiet_diffusers, quiet_loading

        quiet_loading()
        kind = model_kind(path)
        check_weights_are_safe(path, allow_pickle)
        classes = {"ClassConditionalPipeline": ClassConditionalPipeline, "OneStepClassPipeline": OneStepClassPipeline}
        if kind not in classes:
            raise SFDError(f"{path} holds a {kind or 'unknown'} pipeline; expected a class-conditional model ({', '.join(classes)})")
        try:
            pipe = classes[kind].from_pretrained(str(path), use_safetensors=not allow_pickle)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise SFDError(f"could not load {path}: {first_line(e)}") from None
        with quiet_diffusers():  # weights may be stored in fp16; sampling and training run in fp32
            return pipe.to(device, dtype or torch.float32)

    # ----------------------------------------------------------------------------------------- training
    def default_teacher_guidance(self, pipe) -> float:
        return float(pipe.config.default_guidance_scale) if pipe.null_class is not None else 1.0

    def conditions(self, pipe, forget, override, *, retain_prompts=None, negative_prompt="", world_meta=None, device="cpu"):
        from ..concepts import RANDOM, ClassForgetSpec

        if retain_prompts or negative_prompt:
            raise SFDError("--retain-prompts and --negative-prompt apply to text-to-image models, not class-conditional ones")
        names = pipe.config.class_names
        if not forget:
            return ClassForgetSpec.retain_all(names, null_class=pipe.null_class)
        return ClassForgetSpec.parse(names, list(forget), RANDOM if override is None else override, null_class=pipe.null_class)

    def training_options(self, pipe, device, frozen_dtype=None, gradient_checkpointing=None) -> dict:
        return {}  # small UNets: fp32 everywhere

    def check_base_conditioning(self, teacher, base, where: str) -> None:
        if list(teacher.config.class_names) != list(base.config.class_names):
            raise SFDError(f"{where}: its classes ({', '.join(base.config.class_names)}) are not the teacher's "
                           f"({', '.join(teacher.config.class_names)})")

    def one_step_pipeline_from(self, teacher, unet, convention: OneStepConvention):
        from pipelines import OneStepClassPipeline

        return OneStepClassPipeline(unet=unet, scheduler=teacher.scheduler, class_names=teacher.config.class_names,
                                    **convention.config())

    # ---------------------------------------------------------------------------------------- sampling
    def user_condition(self, prompt=None, class_=None) -> str:
        if class_ is None:
            raise SFDError("give --class K for a class-conditional model")
        return str(class_)

    def check_condition(self, pipe, condition: str) -> None:
        try:
            self.class_index(pipe, condition)
        except SFDError as e:
            raise SFDError(f"is class-conditional: each prompt must name a class ({e})") from None

    def condition_label(self, pipe, condition: str) -> str:
        return pipe.config.class_names[self.class_index(pipe, condition)]

    def class_index(self, pipe, condition: str) -> int:
        from ..concepts import resolve_class

        return resolve_class(condition, pipe.config.class_names)

    def sample(self, pipe, conditions: Sequence[str], generators, steps=None, guidance=None, negative_prompt=None) -> torch.Tensor:
        labels = [self.class_index(pipe, c) for c in conditions]
        kw = {}
        if not self.is_one_step(pipe):
            kw = {k: v for k, v in (("num_inference_steps", steps), ("guidance_scale", guidance)) if v is not None}
        return pipe(labels, generator=list(generators), output_type="pt", show_progress=False, **kw).images

    fallback_sampling = (18, 1.0)  # ClassConditionalPipeline's own defaults

    def recorded_sampling(self, model_index: dict, world_meta: dict) -> tuple[int | None, float | None]:
        return model_index.get("default_num_inference_steps"), model_index.get("default_guidance_scale")

    def image_size(self, pipe) -> int:
        return int(pipe.unet.config.sample_size)

    def usage(self, lora: bool = False, sigma_init: float | None = None) -> list[str]:
        lines = ["```python", "from pipelines import OneStepClassPipeline", "pipe = OneStepClassPipeline.from_pretrained(PATH)",
                 "images = pipe([0, 1, 2], output_type='pil').images", "```",
                 "or `sfd sample --model PATH --class 2 --n 16 --out samples/`."]
        if lora:
            lines += ["", "The generator's LoRA adapter alone (peft keys, `generator/` prefix) is in `sfd_adapters.safetensors`; "
                      "UNet2DModel has no diffusers LoRA loader, so use the merged `unet/` above."]
        return lines

    def lora_targets(self) -> list[str]:
        # UNet2DModel without attention: LoRA on the second convolution of each ResNet block, the time projections
        # and the class embedding (DESIGN.md section 2.2). On the digits world adapters on every convolution (also
        # conv1, conv_in, conv_out, conv_shortcut) cost 1.01-1.08x full mode's time per iteration, since a rank-16
        # adapter on a 64-channel 3x3 convolution adds a quarter of its work; these targets 0.86x (BENCHMARKS.md, issue 15).
        return ["conv2", "time_emb_proj", "class_embedding"]

    def preset(self, world_meta: dict) -> str:
        return "class"
