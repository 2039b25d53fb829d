import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest
import torch

# One thread: on this 2-core machine torch's thread pool thrashes as soon as anything else runs.
torch.set_num_threads(1)


def tiny_class_unet(num_classes: int = 4, seed: int = 0):
    """A class-conditional UNet2DModel small enough for unit tests (random weights, seeded)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1, num_class_embeds=num_classes, norm_num_groups=8,
    )


@pytest.fixture
def tiny_teacher_dir(tmp_path):
    """A tiny random class-conditional teacher saved as a ClassConditionalPipeline folder."""
    from diffusers import HeunDiscreteScheduler

    from sfd.pipelines import ClassConditionalPipeline
    from sfd.core.worlds.digits import teacher_scheduler_config

    pipe = ClassConditionalPipeline(
        unet=tiny_class_unet(), scheduler=HeunDiscreteScheduler(**teacher_scheduler_config(), use_karras_sigmas=True),
        class_names=["zero", "one", "two", "three"],
    )
    path = tmp_path / "teacher"
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_sd(prediction_type: str = "epsilon", seed: int = 0):
    """A tiny random StableDiffusionPipeline built offline from configs (diffusers' dummy-component sizes)."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sfd.core.worlds.tokenizer import VOCAB_SIZE, build_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    torch.manual_seed(seed + 2)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                                        eos_token_id=49407, pad_token_id=49407))
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                        beta_schedule="scaled_linear", prediction_type=prediction_type, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=build_clip_tokenizer(), unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd") / "tiny-sd"
    build_tiny_sd().save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_sdxl(seed: int = 0):
    """A tiny random StableDiffusionXLPipeline from configs (diffusers' SDXL dummy-component sizes)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sfd.core.worlds.tokenizer import VOCAB_SIZE, build_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=32)
    torch.manual_seed(seed + 2)
    te1 = CLIPTextModel(CLIPTextConfig(**text))
    torch.manual_seed(seed + 3)
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**text))
    sched = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=build_clip_tokenizer(),
                                     tokenizer_2=build_clip_tokenizer(), unet=unet, scheduler=sched)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    build_tiny_sdxl().save_pretrained(path, safe_serialization=True)
    return path


def _tiny_text_config(**kw):
    from transformers import CLIPTextConfig

    from sfd.core.worlds.tokenizer import VOCAB_SIZE

    return CLIPTextConfig(**{**dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                                    pad_token_id=49407, projection_dim=32), **kw})


def _tiny_t5(d_model: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    from sfd.core.worlds.tokenizer import VOCAB_SIZE

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=VOCAB_SIZE, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=49407, eos_token_id=49407))


def _tiny_flow_vae(seed: int, latent_channels: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=latent_channels, norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         shift_factor=0.0609, scaling_factor=1.5305)


def build_tiny_sd3(seed: int = 0):
    """A tiny random StableDiffusion3Pipeline (diffusers' SD3 dummy-component sizes; CLIP-L, CLIP-G and a T5 from configs,
    the offline CLIP tokenizer for all three)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    from sfd.core.worlds.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64,
                                        pooled_projection_dim=64, out_channels=4)
    torch.manual_seed(seed + 1)
    te1 = CLIPTextModelWithProjection(_tiny_text_config())
    torch.manual_seed(seed + 2)
    te2 = CLIPTextModelWithProjection(_tiny_text_config())
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=_tiny_flow_vae(seed + 3, 4), text_encoder=te1, tokenizer=build_clip_tokenizer(),
                                    text_encoder_2=te2, tokenizer_2=build_clip_tokenizer(), text_encoder_3=_tiny_t5(64, seed + 4),
                                    tokenizer_3=build_clip_tokenizer())
    return pipe


def build_tiny_flux(seed: int = 0, guidance_embeds: bool = True):
    """A tiny random FluxPipeline (diffusers' FLUX dummy-component sizes); guidance_embeds as FLUX.1-dev."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    from sfd.core.worlds.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                         axes_dims_rope=(4, 4, 8), guidance_embeds=guidance_embeds)
    torch.manual_seed(seed + 1)
    clip = CLIPTextModel(_tiny_text_config())
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                            max_image_seq_len=4096)
    return FluxPipeline(scheduler=sched, vae=_tiny_flow_vae(seed + 2, 4), text_encoder=clip, tokenizer=build_clip_tokenizer(),
                        text_encoder_2=_tiny_t5(32, seed + 3), tokenizer_2=build_clip_tokenizer(), transformer=transformer)


def free_port() -> str:
    """A TCP port nothing listens on now, for the rendezvous of a multi-process test (a fixed port can still be
    held, e.g. in TIME_WAIT, by an earlier run)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])
