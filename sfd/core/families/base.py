"""The model-family interface (DESIGN.md section 3): what `erase`, `distill`, `sample`, `audit` and `demo` ask of a kind of model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from sfd.kernel.errors import SFDError, first_line  # noqa: F401 (first_line: the families import it from here)

if TYPE_CHECKING:  # torch loads when a model does, not when the demo lists its models
    import torch

    from sfd.kernel.denoisers import Denoiser
    from sfd.kernel.generators import OneStepConvention, OneStepGenerator

# UNet config entries that describe the file, not the architecture.
_CONFIG_NOISE = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")
_LATENT_KEYS = ("in_channels", "out_channels", "sample_size")


class ModelFamily:
    """One kind of model: a multi-step teacher pipeline and the one-step pipeline SFD distils from it."""

    name: str  # e.g. "class-unet", "sd"
    description: str  # for messages: "class-conditional UNet2D", "Stable Diffusion 1.x/2.x"
    teacher_pipeline: str  # model_index.json _class_name of a teacher
    one_step_pipeline: str  # ... of a one-step generator made by `sfd distill` / `sfd erase`
    condition_kind: str  # what a user gives per image: "class" (a class name or index) or "text" (a prompt)
    metrics: str  # which world metrics apply: "judge" (a class judge) or "clip" (CLIP concept detection)
    # What the demo (sfd/app/) asks instead of branching on the kind of model; plain attributes, so that it can ask
    # them of a folder's model_index.json without loading the model or torch.
    kind_phrase: str  # the kind of model in words, for labels and messages: "text-to-image" or "class-conditional"
    condition_from_list: bool  # True: a condition is one of the model's class names, picked from a list (and typed
    # one per line in audits); False: a free prompt, with a negative prompt for multi-step models
    demo_sampling: tuple[int, float]  # the demo's (sampler steps, guidance) for a teacher whose folder records none
    # What the model card and the Hub metadata say (sfd/core/model_card.py, sfd/core/export/hub.py).
    condition_flag: str  # `sfd sample`'s option for one condition: "--prompt" or "--class"
    forgotten_noun: str  # what an erase forgets, in words: "concept" or "class"
    pipeline_tag: str  # the Hub's pipeline_tag: "text-to-image" or "unconditional-image-generation"
    image_ui_export: bool  # whether `sfd export` writes the files AUTOMATIC1111 and ComfyUI load (text-to-image families)
    single_file_layout: str | None = None  # the original single-file checkpoint layout of its models, if it has one:
    # "sd" or "sdxl" (sfd/core/export/single_file.py; also what kohya-lora exports need)
    hub_tag: str = ""  # the Hub's tag for the family ("stable-diffusion-xl"); its name when empty
    # The conditioning entries an attacker may move (the conditioning attack, robust SFD's `conditioning` space): the
    # text encoders' outputs. Size and crop ids (SDXL's time_ids) and FLUX's guidance are not text.
    attack_leaves: tuple[str, ...] = ("encoder_hidden_states", "pooled_projections", "text_embeds")

    network_name = "unet"  # the pipeline component SFD trains: "unet", or "transformer" for DiT families

    def network(self, pipe):
        return getattr(pipe, self.network_name)

    def default_convention(self, t_init: int):
        """How a generator distilled here from the teacher is called: SiD's convention at t_init."""
        from sfd.kernel.generators import OneStepConvention

        return OneStepConvention(t_init)

    @property
    def pipeline_classes(self) -> tuple[str, str]:
        return (self.teacher_pipeline, self.one_step_pipeline)

    def is_one_step_class(self, pipeline_class: str) -> bool:
        return pipeline_class == self.one_step_pipeline

    def is_one_step(self, pipe) -> bool:
        return type(pipe).__name__ == self.one_step_pipeline

    def comparable(self, other: ModelFamily) -> bool:
        """Whether a model of `other` is drawn from the same input as one of this family, so that the demo can show the
        two side by side on one prompt (or class) and seed: the same kind of condition."""
        return self.condition_kind == other.condition_kind

    def example_erasure(self, class_names: Sequence[str] = ()) -> tuple[str, str | None]:
        """(concept to forget, override) of the one `sfd erase` command the demo suggests for a model of this family
        with these class names; override None: the family's own (a class erasure's random other class)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ loading
    def load(self, path: str, device: str = "cpu", allow_pickle: bool = False, dtype: torch.dtype | None = None,
             resolution: int | None = None):
        """The teacher or one-step pipeline at `path`, in fp32 unless `dtype`; safetensors only unless `allow_pickle`.
        `resolution`: the image side in pixels a teacher is trained at (text families; default: its own)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- training
    def teacher_denoiser(self, pipe) -> Denoiser:
        """The pipeline's network as an x0-denoiser in sigma space."""
        from sfd.kernel.denoisers import Denoiser

        return Denoiser.from_unet_and_scheduler_config(self.network(pipe), pipe.scheduler.config)

    def generator(self, pipe) -> OneStepGenerator:
        """The one-step generator of a one-step pipeline, called by the convention its config records."""
        from sfd.kernel.generators import OneStepConvention, OneStepGenerator

        return OneStepGenerator(self.teacher_denoiser(pipe), OneStepConvention.from_config(pipe.config))

    def default_teacher_guidance(self, pipe) -> float:
        """Guidance used in the generator loss when the preset leaves it unset."""
        return 1.0

    def conditions(self, pipe, forget: Sequence[str], override: str | None, *, retain_prompts: Sequence[str] | None = None,
                   negative_prompt: str = "", world_meta: dict | None = None, device: str = "cpu"):
        """The condition sampler the trainer draws batches from (`spec.sample(...)`, `spec.describe()`);
        no `forget` concepts: stage-1 distillation over everything the teacher knows."""
        raise NotImplementedError

    def encode(self, pipe, prompts: list[str], device=None, grad: bool = False):
        """The network's conditioning of `prompts` as the stock pipeline computes it: a tensor of encoder hidden states
        (SD) or a dict of tensors; without gradients unless `grad` (the attacks differentiate through it)."""
        raise NotImplementedError

    def class_embedding(self, pipe):
        """The attack hook of class-conditional models: the network's class-embedding layer (labels in, vectors out),
        whose output an attacker may replace; None for models not conditioned on classes."""
        return self.class_embedding_of(self.network(pipe))

    def class_embedding_of(self, network):
        """`class_embedding` of a network itself (a trained role's, which robust SFD perturbs); None without classes."""
        return None

    def text_encoders(self, pipe) -> list[tuple[str, object, object]]:
        """The attack hook: (component name, tokenizer, text encoder) of every text encoder `encode` runs, in order.
        An attacker perturbs their token embeddings (soft prompts, textual inversion); the first is a CLIP encoder,
        whose whole-word tokens hard prompts are written in. [] for models without text."""
        return []

    def latent_shape(self, pipe) -> tuple[int, ...]:
        cfg = self.network(pipe).config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    def training_options(self, pipe, device: str, frozen_dtype: str | None = None, gradient_checkpointing: bool | None = None) -> dict:
        """Memory settings: on CUDA a bf16 teacher and bf16 autocast; gradient checkpointing above 100M parameters."""
        import torch

        dtype = _torch_dtype(frozen_dtype, device)
        big = sum(p.numel() for p in self.network(pipe).parameters()) > 100e6
        return {"frozen_dtype": dtype, "gradient_checkpointing": big if gradient_checkpointing is None else gradient_checkpointing,
                "autocast_dtype": torch.bfloat16 if str(device).startswith("cuda") else None}

    def check_base(self, teacher, base, base_path: str, flag: str = "--generator") -> None:
        """One clear line if a one-step base does not fit the teacher: architecture, latent shape, noise schedule, conditioning;
        `flag` names the option the base was given with (`--unet` for `sfd import-base`)."""
        where = f"{flag} {base_path}"
        if not self.is_one_step(base):
            raise SFDError(f"{where} is a multi-step {type(base).__name__}; give a one-step model (made by `sfd distill`, "
                           "or imported with `sfd import-base`)")
        t_net, b_net = self.network(teacher), self.network(base)
        t_cfg, b_cfg = _arch(t_net), _arch(b_net)
        latent = [k for k in _LATENT_KEYS if t_cfg.get(k) != b_cfg.get(k)]
        if latent:
            raise SFDError(f"{where}: its latent shape does not match the teacher's ("
                           + ", ".join(f"{k} {b_cfg.get(k)} vs {t_cfg.get(k)}" for k in latent) + ")")
        if type(t_net) is not type(b_net) or t_cfg != b_cfg:
            keys = sorted(k for k in set(t_cfg) | set(b_cfg) if t_cfg.get(k) != b_cfg.get(k))
            raise SFDError(f"{where}: its network architecture does not match the teacher's ("
                           + (", ".join(keys[:4]) if keys else f"{type(b_net).__name__} vs {type(t_net).__name__}") + " differ)")
        import torch

        t_s, b_s = self.teacher_denoiser(teacher).schedule, self.teacher_denoiser(base).schedule
        if t_s.num_train_timesteps != b_s.num_train_timesteps or not torch.allclose(t_s.sigmas, b_s.sigmas, rtol=1e-4):
            raise SFDError(f"{where}: its noise schedule does not match the teacher's (betas or number of timesteps differ)")
        self.check_base_conditioning(teacher, base, where)

    def check_base_conditioning(self, teacher, base, where: str) -> None:
        raise NotImplementedError

    def one_step_pipeline_from(self, teacher, network, convention: OneStepConvention):
        """A one-step pipeline made of the teacher's other components and the generator network."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------- sampling
    def user_condition(self, prompt: str | None = None, class_: str | None = None) -> str:
        """The one condition a user gave on the command line (`--prompt` or `--class`), checked for this family."""
        raise NotImplementedError

    def check_condition(self, pipe, condition: str) -> None:
        """Raise SFDError("<why>") when `condition` is not something this model can be conditioned on."""

    def condition_label(self, pipe, condition: str) -> str:
        """A short file-name label for images of `condition`."""
        return "image"

    def sample(self, pipe, conditions: Sequence[str], generators: Sequence[torch.Generator], steps: int | None = None,
               guidance: float | None = None, negative_prompt: str | None = None) -> torch.Tensor:
        """Images in [0, 1] (NCHW), one per condition, each from its own generator; `steps`, `guidance` and
        `negative_prompt` apply to multi-step teachers (one-step models ignore them)."""
        raise NotImplementedError

    def recorded_sampling(self, model_index: dict, world_meta: dict) -> tuple[int | None, float | None]:
        """(sampler steps, guidance) a teacher folder records for itself (model_index.json or sfd_world.json), if any."""
        return world_meta.get("default_num_inference_steps"), world_meta.get("default_guidance_scale")

    fallback_sampling: tuple[int, float] = (50, 7.5)  # a teacher that records nothing: the family's usual sampler

    def sampler_defaults(self, pipe, world_meta: dict) -> tuple[int | None, float | None]:
        """(sampler steps, guidance) a multi-step teacher is sampled with by default; (None, None) for one-step models."""
        if self.is_one_step(pipe):
            return None, None
        steps, guidance = self.recorded_sampling(dict(pipe.config), world_meta)
        return int(steps or self.fallback_sampling[0]), float(guidance if guidance is not None else self.fallback_sampling[1])

    def image_size(self, pipe) -> int:
        raise NotImplementedError

    lora_loader: bool = False  # whether stock diffusers' `load_lora_weights` loads the `lora/` folder save_lora writes

    def stock_recipe(self, pipe, load: str, condition: str, n: int, seed: int, lora: str | None = None) -> list[str] | None:
        """Python lines that sample the one-step folder `pipe` was saved as with diffusers, torch and PIL alone, for the
        model card: `load` is the code of the folder to load (e.g. "PATH"), `lora` that of an adapter folder to load onto
        it. They write sample_{i}.png for seeds seed + i, i < n: the images `sfd sample --n n --seed seed` writes for
        `condition`. None when no stock recipe reproduces this generator (another one-step convention)."""
        return None

    def lora_targets(self) -> list[str]:
        """Module names LoRA adapts by default in this family's network."""
        raise NotImplementedError

    def save_lora(self, teacher, folder, state: dict, rank: int, targets: list[str]) -> None:
        """Write the generator adapter (`state`, peft keys) in the format this family's tools load; the folder's
        sfd_adapters.safetensors already holds it for `sfd erase --lora`."""

    def sampler_kwargs(self, pipe) -> dict:
        """Extra arguments of this pipeline's own call that the folder needs to sample as it was trained (a world
        SD3 teacher's short T5 slot); none for most."""
        return {}

    # The hyperparameter presets made for this family (their values: sfd/core/config.py), its default first. A
    # preset's t_init is its family's one-step convention and its guidance the family's kind, so `--preset` takes
    # only these (sfd.core.config.check_preset_fits).
    presets: tuple[str, ...] = ()

    def preset(self, world_meta: dict) -> str:
        """The preset for this model: a world's own for this family ("shapes-sd3"), else the world's ("shapes"), when
        made for this family; else the family's default."""
        world = world_meta.get("world")
        return next((n for n in (f"{world}-{self.name}", world) if n in self.presets), self.presets[0])


def _arch(unet) -> dict:
    return {k: v for k, v in dict(unet.config).items() if k not in _CONFIG_NOISE}


def _torch_dtype(name: str | None, device: str):
    import torch

    if name in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise SFDError(f"unknown dtype {name!r}; expected fp32, bf16 or fp16")
    return table[name]
