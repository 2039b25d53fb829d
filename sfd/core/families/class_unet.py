"""Class-conditional UNet2D models (the paper's label-conditional DDPM setting; the digits world)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from sfd.kernel.errors import SFDError
from sfd.core.families.base import ModelFamily, first_line

if TYPE_CHECKING:
    import torch

    from sfd.kernel.generators import OneStepConvention


class ClassUNetFamily(ModelFamily):
    name = "class-unet"
    description = "class-conditional UNet2D"
    teacher_pipeline = "ClassConditionalPipeline"
    one_step_pipeline = "OneStepClassPipeline"
    condition_kind = "class"
    metrics = "judge"
    kind_phrase = "class-conditional"
    condition_from_list = True
    demo_sampling = (18, 2.0)
    condition_flag = "--class"
    forgotten_noun = "class"
    pipeline_tag = "unconditional-image-generation"  # class labels are not text: the Hub has no class-conditional tag
    image_ui_export = False
    presets = ("class",)

    def load(self, path: str, device: str = "cpu", allow_pickle: bool = False, dtype: torch.dtype | None = None,
             resolution: int | None = None):
        import torch

        from sfd.pipelines import ClassConditionalPipeline, OneStepClassPipeline

        if resolution is not None:  # pixel-space UNets are trained at their own size
            raise SFDError("--resolution applies to text-to-image models (latent diffusion), not class-conditional ones")

        from sfd.core.models import check_weights_are_safe, model_kind, quiet_diffusers, quiet_loading

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

    def class_embedding_of(self, network):
        return network.class_embedding

    # ----------------------------------------------------------------------------------------- training
    def default_teacher_guidance(self, pipe) -> float:
        return float(pipe.config.default_guidance_scale) if pipe.null_class is not None else 1.0

    def conditions(self, pipe, forget, override, *, retain_prompts=None, negative_prompt="", world_meta=None, device="cpu"):
        from sfd.core.concepts import RANDOM, ClassForgetSpec

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
        from sfd.pipelines import OneStepClassPipeline

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
        from sfd.core.concepts import resolve_class

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

    def example_erasure(self, class_names=()) -> tuple[str, str | None]:
        """The fourth class ("three" in the digits world), else the first; the override: a random other class."""
        names = list(class_names)
        return (names[3] if len(names) > 3 else (names[0] if names else "0")), None

    # Turning the network's output at timestep t into x0 on the VP schedule (abar = alphas_cumprod[t]), as code.
    _X0 = {"epsilon": "(x_t - (1 - abar).sqrt() * out) / abar.sqrt()", "v_prediction": "abar.sqrt() * x_t - (1 - abar).sqrt() * out",
           "sample": "out"}

    def stock_recipe(self, pipe, load: str, condition: str, n: int, seed: int, lora: str | None = None) -> list[str] | None:
        """No diffusers pipeline samples a class-conditional UNet2DModel, so the recipe is the generator itself in torch:
        the network at its timestep on its input (SiD's: the noise of that level, sqrt(1 - abar_t) z), then x0.
        UNet2DModel has no diffusers LoRA loader (`lora` gives None: use the merged unet/)."""
        from sfd.kernel.generators import OneStepConvention

        conv = OneStepConvention.from_config(pipe.config)
        pred = conv.prediction_type or pipe.scheduler.config.prediction_type
        if lora or not float(conv.timestep).is_integer() or pred not in self._X0:
            return None
        t, k, cfg = int(conv.timestep), self.class_index(pipe, condition), pipe.unet.config
        scale = "(1 - abar).sqrt()" if conv.is_sid else repr(float(conv.input_scale))
        sched = type(pipe.scheduler).__name__
        pixels = "p[0].numpy()" if cfg.out_channels == 1 else "p.permute(1, 2, 0).numpy()"
        return ["import torch", "from PIL import Image", f"from diffusers import {sched}, UNet2DModel", "",
                f"unet = UNet2DModel.from_pretrained({load}, subfolder='unet').float()",
                f"abar = {sched}.from_pretrained({load}, subfolder='scheduler').alphas_cumprod[{t}]",
                f"z = torch.cat([torch.randn((1, {cfg.in_channels}, {cfg.sample_size}, {cfg.sample_size}), "
                f"generator=torch.Generator().manual_seed({seed} + i)) for i in range({n})])",
                f"x_t = {scale} * z",
                "with torch.no_grad():",
                f"    out = unet(x_t, torch.full(({n},), {t}), class_labels=torch.full(({n},), {k})).sample  # class {condition!r}",
                f"x0 = {self._X0[pred]}",
                "for i, p in enumerate(((x0 / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)):",
                f"    Image.fromarray({pixels}).save(f'sample_{{i}}.png')"]

    def lora_targets(self) -> list[str]:
        # UNet2DModel without attention: LoRA on the second convolution of each ResNet block, the time projections
        # and the class embedding (DESIGN.md section 2.2). On the digits world adapters on every convolution (also
        # conv1, conv_in, conv_out, conv_shortcut) cost 1.01-1.08x full mode's time per iteration, since a rank-16
        # adapter on a 64-channel 3x3 convolution adds a quarter of its work; these targets 0.86x (BENCHMARKS.md, issue 15).
        return ["conv2", "time_emb_proj", "class_embedding"]
