"""The shapes world's teacher structures: TeacherTrainConfig, the SD UNet / text encoder / pipeline builders, the training
objectives (epsilon prediction with Min-SNR weights, rectified flow) and the SD, SDXL and SD3 teacher parts (TEACHER_PARTS).
The training loop that uses them is `train_teacher` in sfd/commands/worlds/shapes.py."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch

from sfd.kernel.schedules import DiscreteVPSchedule

from sfd.core.worlds.tokenizer import MODEL_MAX_LENGTH

from sfd.core.worlds.shapes import IMAGE_SIZE


@dataclass(frozen=True)
class TeacherTrainConfig:
    # The shortest schedule (in steps of 500) meeting the world's target with the default sampler: every
    # colour x shape prompt shows its colour in >= 80% and its shape in >= 60% of images (1500: shape min 59%).
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1  # captions replaced by "" so classifier-free guidance has an unconditional model
    min_snr_gamma: float = 5.0  # Min-SNR loss weighting (Hang et al. 2023): faster convergence at equal cost
    dataset_size: int = 16384  # renders encoded once; latents are re-sampled from their posteriors each step
    block_out_channels: tuple[int, ...] = (64, 128)
    cross_attention: tuple[bool, ...] = (False, True)  # per resolution, highest first: attention only at 4x4
    layers_per_block: int = 1
    attention_head_dim: int = 8
    # Also add an attention-pooled text embedding to the time embedding (diffusers' addition_embed_type
    # "text"), so every resnet sees the caption, not only the 4x4 cross-attention: learns colour and
    # shape far sooner at equal cost. It reads encoder_hidden_states, so SD pipelines run it unchanged.
    pooled_text: bool = True
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    seed: int = 0


def scheduler_config() -> dict:
    """Stable Diffusion's training schedule (t = 625 gives sigma ~ 2.5, as in SD); 'trailing' so that
    few-step sampling starts from the last (noisiest) timestep."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1)


def build_unet(cfg: TeacherTrainConfig = TeacherTrainConfig(), latent_channels: int = 4, **addition):
    """The world's UNet; `addition`: its extra conditioning (default the SD teacher's: a pooled-text embedding when
    cfg.pooled_text; SDXL's teacher passes its text_time embedding)."""
    from diffusers import UNet2DConditionModel

    addition = addition or {"addition_embed_type": "text" if cfg.pooled_text else None, "addition_embed_type_num_heads": 4}
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.cross_attention))
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        down_block_types=down, up_block_types=up, cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=32, **addition,
    )


def build_text_encoder(cfg: TeacherTrainConfig = TeacherTrainConfig()):
    """A tiny CLIPTextModel with CLIP's vocabulary and SD's 77 positions (the pipeline pads to 77)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from sfd.core.worlds.tokenizer import VOCAB_SIZE

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=77,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=cfg.text_width,
    ))


def make_pipeline(vae, text_encoder, tokenizer, unet):
    """Assemble a StableDiffusionPipeline with the world's default sampler (DPM-Solver++ 2M, SD's betas)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=DPMSolverMultistepScheduler(**scheduler_config()),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@functools.lru_cache(maxsize=1)
def _sd_alphas_cumprod() -> torch.Tensor:
    """abar_t = 1 / (1 + sigma_t^2) of SD's training schedule (computed once, not every training step)."""
    return (1 + DiscreteVPSchedule.from_scheduler_config(scheduler_config()).sigmas ** 2).reciprocal()


def epsilon_loss(unet, z0: torch.Tensor, cond: dict, gen: torch.Generator, cfg: TeacherTrainConfig) -> torch.Tensor:
    """Stable Diffusion's objective: epsilon prediction at a uniform training timestep of SD's VP schedule, with
    Min-SNR weights (cfg.min_snr_gamma)."""
    abar = _sd_alphas_cumprod()
    t = torch.randint(len(abar), (len(z0),), generator=gen)
    eps = torch.randn(z0.shape, generator=gen)
    a = abar[t].view(-1, 1, 1, 1)
    pred = unet(a.sqrt() * z0 + (1 - a).sqrt() * eps, t, **cond).sample
    snr = abar[t] / (1 - abar[t])
    weight = snr.clamp(max=cfg.min_snr_gamma) / snr
    return (weight * ((pred - eps) ** 2).mean((1, 2, 3))).mean()


def flow_loss(transformer, z0: torch.Tensor, cond: dict, gen: torch.Generator, cfg: TeacherTrainConfig) -> torch.Tensor:
    """SD3's rectified-flow objective: x_t = (1 - t) x0 + t eps, the network predicts v = eps - x0 at diffusers'
    timestep 1000 t, with t drawn logit-normal(0, 1) (SD3's default density; Esser et al. 2024, section 3.1)."""
    t = torch.sigmoid(torch.randn(len(z0), generator=gen))
    eps = torch.randn(z0.shape, generator=gen)
    tt = t.view(-1, 1, 1, 1)
    pred = transformer(hidden_states=(1 - tt) * z0 + tt * eps, timestep=1000 * t, **cond).sample
    return ((pred - (eps - z0)) ** 2).mean()


class _TeacherParts:
    """What every teacher structure of the world sets (TEACHER_PARTS); SD's values unless a family overrides them."""

    loss = staticmethod(epsilon_loss)
    default_steps: int | None = None  # training steps when not TeacherTrainConfig's
    text_length = MODEL_MAX_LENGTH  # the tokenizer's model_max_length: SD pipelines pad prompts to it
    extra_meta: dict = {}  # what the family needs in sfd_world.json to call the teacher as it was trained


def _half_width_text_config(cfg: TeacherTrainConfig):
    """A CLIP text encoder of half the SD teacher's width and one more layer (SDXL's and SD3's two encoders)."""
    from transformers import CLIPTextConfig

    from sfd.core.worlds.tokenizer import VOCAB_SIZE

    w = cfg.text_width // 2
    return CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=w, intermediate_size=4 * w, num_hidden_layers=cfg.text_layers + 1,
                          num_attention_heads=max(1, cfg.text_heads // 2), max_position_embeddings=77, bos_token_id=49406,
                          eos_token_id=49407, pad_token_id=49407, projection_dim=w)


class SDTeacherParts(_TeacherParts):
    """The Stable Diffusion teacher of the world: one CLIP text encoder; dropped captions become "" for guidance."""

    def text_encoders(self, cfg: TeacherTrainConfig) -> list:
        return [build_text_encoder(cfg)]

    def unet(self, cfg: TeacherTrainConfig, latent_channels: int):
        return build_unet(cfg, latent_channels)

    def unet_kwargs(self, encoders, tokens: torch.Tensor, dropped: torch.Tensor) -> dict:
        """The UNet's conditioning of caption tokens (rows already swapped to "" where dropped)."""
        return {"encoder_hidden_states": encoders[0](tokens)[0]}

    def pipeline(self, vae, encoders, tokenizer, unet):
        return make_pipeline(vae, encoders[0], tokenizer, unet)


class SDXLTeacherParts(_TeacherParts):
    """An SDXL-structured teacher of the same size: two CLIP text encoders of half the width (hidden states of
    the penultimate layer concatenated, so the UNet's cross-attention width is the SD teacher's), the second's
    projected pooled embedding and the size/crop time ids as `added_cond_kwargs` (addition_embed_type
    "text_time"), and dropped captions as zeros, as StableDiffusionXLPipeline's force_zeros_for_empty_prompt."""

    time_embed_dim = 8

    def text_encoders(self, cfg: TeacherTrainConfig) -> list:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        return [CLIPTextModel(_half_width_text_config(cfg)), CLIPTextModelWithProjection(_half_width_text_config(cfg))]

    def unet(self, cfg: TeacherTrainConfig, latent_channels: int):
        return build_unet(cfg, latent_channels, addition_embed_type="text_time", addition_time_embed_dim=self.time_embed_dim,
                          projection_class_embeddings_input_dim=6 * self.time_embed_dim + cfg.text_width // 2)

    def unet_kwargs(self, encoders, tokens: torch.Tensor, dropped: torch.Tensor) -> dict:
        outs = [e(tokens, output_hidden_states=True) for e in encoders]
        hidden = torch.cat([o.hidden_states[-2] for o in outs], dim=-1)
        pooled = outs[1][0]
        keep = (~dropped).to(hidden.dtype)
        time_ids = torch.tensor([[IMAGE_SIZE, IMAGE_SIZE, 0, 0, IMAGE_SIZE, IMAGE_SIZE]], dtype=hidden.dtype).expand(len(tokens), -1)
        return {"encoder_hidden_states": hidden * keep.view(-1, 1, 1),
                "added_cond_kwargs": {"text_embeds": pooled * keep.view(-1, 1), "time_ids": time_ids}}

    def pipeline(self, vae, encoders, tokenizer, unet):
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(vae=vae.eval(), text_encoder=encoders[0].eval(), text_encoder_2=encoders[1].eval(),
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet.eval(),
                                         scheduler=DPMSolverMultistepScheduler(**scheduler_config()), force_zeros_for_empty_prompt=True)


class SD3TeacherParts(_TeacherParts):
    """An SD3-structured teacher: a small `SD3Transformer2DModel` (MMDiT: joint attention of image and text tokens,
    adaLN from the timestep and pooled text) trained with the rectified-flow objective, so that the flow family's
    code (velocity networks, x0 = x_t - t v, FlowMatchEuler sampling) is proven on a trained model. CLIP-L and CLIP-G
    are two CLIP encoders of half the SD teacher's width (penultimate hidden states concatenated into the joint
    sequence, projected pooled embeddings concatenated into `pooled_projections`), as StableDiffusion3Pipeline
    encodes them. There is no T5: the slot is zeros, as diffusers runs SD3 with `text_encoder_3=None`, at
    `max_sequence_length` tokens (kept short, and recorded in sfd_world.json, so the joint sequence stays small).
    Dropped captions are encoded "" (SD3 guides with the encoded empty prompt, not zeros). A transformer rather than
    the shapes UNet under a flow objective, because StableDiffusion3Pipeline and the SD3 family call an
    SD3Transformer2DModel: a flow-trained UNet would need a pipeline that no user runs."""

    loss = staticmethod(flow_loss)
    # 1,500 steps of batch 64: evaluated every 250 steps with 8 images per prompt, the worst prompt's shape rate reached
    # 62.5% at 1,500 and stayed there to 2,000 (colour 100% from 500 on). The 1,500-step teacher: colour min 100%, shape
    # min 69% at 32 images per prompt; 0.65-0.76 s/step on 2 threads, 19.0-22.0 min whole (BENCHMARKS.md, issue 17).
    default_steps = 1500
    text_length = 20  # CLIP tokens: the world's captions are <= 9 tokens with BOS/EOS
    max_sequence_length = 4  # the T5 slot's zero tokens
    extra_meta = {"max_sequence_length": max_sequence_length}
    layers = 6
    heads = 4
    head_dim = 32

    def text_encoders(self, cfg: TeacherTrainConfig) -> list:
        from transformers import CLIPTextModelWithProjection

        return [CLIPTextModelWithProjection(_half_width_text_config(cfg)), CLIPTextModelWithProjection(_half_width_text_config(cfg))]

    def unet(self, cfg: TeacherTrainConfig, latent_channels: int):
        from diffusers import SD3Transformer2DModel

        s = IMAGE_SIZE // 4
        return SD3Transformer2DModel(sample_size=s, patch_size=1, in_channels=latent_channels, out_channels=latent_channels,
                                     num_layers=self.layers, attention_head_dim=self.head_dim, num_attention_heads=self.heads,
                                     joint_attention_dim=cfg.text_width, caption_projection_dim=self.heads * self.head_dim,
                                     pooled_projection_dim=cfg.text_width, pos_embed_max_size=s)

    def unet_kwargs(self, encoders, tokens: torch.Tensor, dropped: torch.Tensor) -> dict:
        outs = [e(tokens, output_hidden_states=True) for e in encoders]
        clip = torch.cat([o.hidden_states[-2] for o in outs], dim=-1)
        t5 = clip.new_zeros(len(tokens), self.max_sequence_length, clip.shape[-1])
        return {"encoder_hidden_states": torch.cat([clip, t5], dim=1), "pooled_projections": torch.cat([o[0] for o in outs], dim=-1)}

    def pipeline(self, vae, encoders, tokenizer, unet):
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        vae.register_to_config(shift_factor=0.0)  # SD3's decode adds vae.config.shift_factor; the world's VAE has none
        return StableDiffusion3Pipeline(transformer=unet.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=vae.eval(),
                                        text_encoder=encoders[0].eval(), tokenizer=tokenizer, text_encoder_2=encoders[1].eval(),
                                        tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)


TEACHER_PARTS = {"sd": SDTeacherParts(), "sdxl": SDXLTeacherParts(), "sd3": SD3TeacherParts()}  # `sfd train-teacher shapes --family NAME`


def teacher_config(family: str = "sd", steps: int | None = None) -> TeacherTrainConfig:
    """The teacher's training settings for a family: TeacherTrainConfig with the family's step count, or `steps`."""
    default = TeacherTrainConfig()
    return replace(default, steps=steps or TEACHER_PARTS[family].default_steps or default.steps)
