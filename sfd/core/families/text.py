"""What every text-to-image family shares (SD 1.x/2.x, SDXL, SD3, FLUX): safe loading, prompts, retain sets and the
erasure's condition sampler, the base-conditioning check, sampling, and the model card's stock recipe.

A family here supplies its pipelines (`pipeline_types`), how prompts are encoded (`encode`, `text_encoders`), its
image size, how its one-step pipeline is built and saved, and how the stock pipeline samples it (`stock_call`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from sfd.kernel.errors import SFDError
from sfd.core.families.base import ModelFamily, first_line

if TYPE_CHECKING:
    import torch

PROBE_PROMPT = "a photo of a red circle"  # compared through both text encoders when a base is checked


def _null_components(path: str) -> dict:
    """Components a local folder saved as None (model_index.json `[null, null]`, e.g. an SD3 without T5): diffusers
    does not restore them on its own and wants them passed (`text_encoder_3=None`)."""
    import json
    from pathlib import Path

    index = Path(path) / "model_index.json"
    if not index.is_file():
        return {}
    cfg = json.loads(index.read_text())
    return {k: None for k, v in cfg.items() if not k.startswith("_") and isinstance(v, list) and v and v[0] is None}


class TextToImageFamily(ModelFamily):
    """A diffusers text-to-image teacher and the one-step text pipeline SFD distils from it: conditioned on prompts,
    scored with CLIP."""

    condition_kind = "text"
    metrics = "clip"
    kind_phrase = "text-to-image"
    condition_from_list = False
    demo_sampling = (20, 5.0)
    condition_flag = "--prompt"
    forgotten_noun = "concept"
    pipeline_tag = "text-to-image"
    image_ui_export = True
    # All four stock pipelines (SD, SDXL, SD3, FLUX) have `load_lora_weights`, which `stock_recipe` calls.
    lora_loader = True

    def pipeline_types(self):
        """(teacher pipeline class, one-step pipeline class)."""
        raise NotImplementedError

    def load_kwargs(self, cls) -> dict:
        """Extra from_pretrained arguments of the teacher pipeline (none unless the family needs some)."""
        return {}

    def load(self, path: str, device: str = "cpu", allow_pickle: bool = False, dtype: torch.dtype | None = None,
             resolution: int | None = None):
        """`resolution`: a teacher's image side in pixels to train at (diffusers' training scripts' --resolution): its
        network's `sample_size` becomes resolution / vae_scale_factor, which the latents, SDXL's size conditioning
        and the one-step folder (a copy of that config) follow. A multiple of the VAE factor x the patch size."""
        import torch

        from sfd.core.families import pipeline_class_of
        from sfd.core.models import check_weights_are_safe, is_hub_id, quiet_loading

        quiet_loading()
        kind = pipeline_class_of(path)
        if not is_hub_id(path):
            check_weights_are_safe(path, allow_pickle)
        if kind not in self.pipeline_classes:
            raise SFDError(f"{path} holds a {kind or 'unknown'} pipeline; expected a {self.description} folder or an SFD one-step model")
        teacher_cls, one_step_cls = self.pipeline_types()
        cls = one_step_cls if kind == self.one_step_pipeline else teacher_cls
        extra = {**_null_components(path), **({} if cls is one_step_cls else self.load_kwargs(cls))}
        try:
            pipe = cls.from_pretrained(path, dtype=dtype or torch.float32, use_safetensors=not allow_pickle, **extra)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
            raise SFDError(f"could not load {path}: {first_line(e)}") from None
        pipe.set_progress_bar_config(disable=True)
        if resolution is not None:
            net = self.network(pipe)
            factor = pipe.vae_scale_factor * int(getattr(net.config, "patch_size", None) or 1)
            if resolution < factor or resolution % factor:
                raise SFDError(f"--resolution {resolution} must be a multiple of {factor} (the VAE's factor "
                               f"{pipe.vae_scale_factor} x the network's patch size)")
            net.register_to_config(sample_size=resolution // pipe.vae_scale_factor)
        return pipe.to(device)

    # ----------------------------------------------------------------------------------------- training
    def conditions(self, pipe, forget, override, *, retain_prompts=None, negative_prompt="", world_meta=None, device="cpu"):
        from sfd.core.concepts import TextForgetSpec
        from sfd.core.prompts import RETAIN_PROMPTS
        from sfd.core.worlds import check_world_concepts, world_prompts

        check_world_concepts(world_meta or {}, forget)
        captions = world_prompts(world_meta or {})
        retain = list(retain_prompts or captions or RETAIN_PROMPTS)
        if not forget:
            spec = TextForgetSpec.retain_only(retain, negative_prompt=negative_prompt)
        else:
            if override is None or str(override).strip().lower() == "random":
                raise SFDError("text-to-image erasure needs an --override text (e.g. --override 'a person wearing clothes')")
            spec = TextForgetSpec.build(forget, override, retain, candidates=captions, negative_prompt=negative_prompt)
        return spec.encode(lambda prompts: self.encode(pipe, prompts, device))

    def check_base_conditioning(self, teacher, base, where: str) -> None:
        import torch

        from sfd.kernel.tree import tree_leaves

        a, b = tree_leaves(self.encode(teacher, [PROBE_PROMPT])), tree_leaves(self.encode(base, [PROBE_PROMPT]))
        if len(a) != len(b) or not all(x.shape == y.shape and torch.allclose(x, y.to(x.device), atol=1e-3) for x, y in zip(a, b)):
            raise SFDError(f"{where}: its text encoder(s) do not encode prompts as the teacher's do (another text encoder or tokenizer)")

    # ---------------------------------------------------------------------------------------- sampling
    def user_condition(self, prompt=None, class_=None) -> str:
        if prompt is None:
            raise SFDError("give --prompt TEXT for a text-to-image model")
        if not prompt.strip():
            raise SFDError("--prompt is empty")
        return prompt

    def sample(self, pipe, conditions: Sequence[str], generators, steps=None, guidance=None, negative_prompt=None) -> torch.Tensor:
        size = self.image_size(pipe)
        kw = {}
        if not self.is_one_step(pipe):
            kw = {k: v for k, v in (("num_inference_steps", steps), ("guidance_scale", guidance)) if v is not None}
            kw.update(self.sampler_kwargs(pipe))
            if negative_prompt:
                kw["negative_prompt"] = [negative_prompt] * len(conditions)
        return pipe(list(conditions), generator=list(generators), height=size, width=size, output_type="pt", **kw).images

    def stock_load_kwargs(self, pipe) -> str:
        """Arguments of the stock teacher pipeline's from_pretrained that a one-step folder needs, as code (none here)."""
        return ""

    def stock_call(self, pipe) -> tuple[str, str, dict] | None:
        """(scheduler class, the stock pipeline's scheduler as code, call arguments as code) that sample the generator in
        one step with the stock teacher pipeline; None when no stock sampler reproduces it."""
        return None

    def stock_recipe(self, pipe, load: str, condition: str, n: int, seed: int, lora: str | None = None) -> list[str] | None:
        call = self.stock_call(pipe)
        if call is None:
            return None
        scheduler_cls, scheduler, kwargs = call
        stock = self.teacher_pipeline
        return ["import torch", f"from diffusers import {scheduler_cls}, {stock}", "",
                f"pipe = {stock}.from_pretrained({load}{self.stock_load_kwargs(pipe)})",
                *([f"pipe.load_lora_weights({lora})"] if lora else []),
                f"pipe.scheduler = {scheduler}",
                f"generators = [torch.Generator().manual_seed({seed} + i) for i in range({n})]",
                f"images = pipe([{condition!r}] * {n}, " + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ", generator=generators).images",
                "for i, image in enumerate(images):", "    image.save(f'sample_{i}.png')"]

    # -------------------------------------------------------------------------------------------- demo
    def example_erasure(self, class_names: Sequence[str] = ()) -> tuple[str, str | None]:
        return "red", "blue"  # the shapes world's (checkpoints/shapes), the demo's default text-to-image world
