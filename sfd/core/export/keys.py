"""The original (CompVis / Stability "LDM") single-file layout of Stable Diffusion 1.x/2.x and SDXL checkpoints.

diffusers reads these files (`from_single_file`) but writes none; A1111 and ComfyUI load them as they are. The mapping
is one table of `Entry` rows built from the pipeline's own keys and configs: each row names one key of the single file
and the diffusers weight(s) it holds, so the same rows write a file (`to_single_file`) and read one back
(`from_single_file_state`), and a key that no rule knows stops the export instead of being dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sfd.kernel.errors import SFDError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


@dataclass(frozen=True)
class Entry:
    original: str  # key in the single file
    component: str  # pipeline component: unet, vae, text_encoder, text_encoder_2
    sources: tuple[str, ...]  # its diffusers key(s): three for OpenCLIP's fused q/k/v projection
    op: str = "copy"  # copy | cat (fused in_proj) | conv (VAE attention: linear <-> 1x1 conv) | transpose (text_projection)


# ----------------------------------------------------------------------------------------------------------- UNet
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _resnet(rest: str) -> str:
    name, _, tail = rest.partition(".")
    if name not in _RESNET:
        raise SFDError(f"UNet resnet weight {rest!r} has no original-layout name")
    return f"{_RESNET[name]}.{tail}"


def unet_key(key: str, layers: int, up_has_attention: set[int]) -> str:
    """The original name of one diffusers UNet2DConditionModel weight. The original layout numbers blocks flatly:
    input block 0 is conv_in, then `layers` resnets (+ attention) and one downsampler per level; the decoder has
    `layers + 1` resnets per level, its upsampler sitting after the attention, when the level has one."""
    for old, new in _UNET_TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key)
    if m:
        side, i, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if side == "down":
            if kind == "downsamplers":
                return f"input_blocks.{(i + 1) * (layers + 1)}.0.op.{rest.removeprefix('conv.')}"
            n = 1 + i * (layers + 1) + j
            return f"input_blocks.{n}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{n}.1.{rest}"
        n = i * (layers + 1) + j
        if kind == "upsamplers":
            return f"output_blocks.{i * (layers + 1) + layers}.{2 if i in up_has_attention else 1}.{rest}"
        return f"output_blocks.{n}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{n}.1.{rest}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        j, rest = int(m.group(2)), m.group(3)
        return f"middle_block.{2 * j}.{_resnet(rest)}" if m.group(1) == "resnets" else f"middle_block.1.{rest}"
    raise SFDError(f"UNet weight {key!r} has no original-layout name (a UNet this export does not know)")


def unet_entries(keys, config) -> list[Entry]:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):  # the original layout (and diffusers' reader) assumes one count for every level
        raise SFDError(f"a UNet with layers_per_block {layers} per level has no original single-file layout")
    if config.get("addition_embed_type") not in (None, "text_time"):  # SDXL's text_time has original keys; others none
        raise SFDError(f"this UNet adds a {config['addition_embed_type']!r} embedding (addition_embed_type), which the "
                       "original Stable Diffusion layout has no keys for, so no single-file loader can read it; export "
                       "it with --format diffusers (or kohya-lora, for a LoRA run)")
    if config.get("class_embed_type") or config.get("num_class_embeds"):
        raise SFDError("a UNet with class embeddings has no Stable Diffusion single-file layout")
    up_att = {int(k.split(".")[1]) for k in keys if k.startswith("up_blocks.") and ".attentions." in k}
    return [Entry(UNET_PREFIX + unet_key(k, layers, up_att), "unet", (k,)) for k in keys]


# ------------------------------------------------------------------------------------------------------------ VAE
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key(key: str, n_up: int) -> tuple[str, str]:
    """(original name, op) of one diffusers AutoencoderKL weight; the original decoder numbers its levels upwards."""
    key = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        part, kind, j, rest = m.groups()
        if kind == "resnets":
            return f"{part}.mid.block_{int(j) + 1}.{rest}", "copy"
        for old, new in _VAE_ATTN.items():
            if rest.startswith(old + "."):
                tail = rest[len(old) + 1:]
                return f"{part}.mid.attn_1.{new}.{tail}", "conv" if old != "group_norm" and tail == "weight" else "copy"
        raise SFDError(f"VAE attention weight {key!r} has no original-layout name")
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.+)", key)
    if m:
        i, what, j, rest = m.groups()
        return (f"encoder.down.{i}.block.{j}.{rest}" if j is not None else f"encoder.down.{i}.downsample.{rest}"), "copy"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)", key)
    if m:
        i, what, j, rest = m.groups()
        level = n_up - 1 - int(i)
        return (f"decoder.up.{level}.block.{j}.{rest}" if j is not None else f"decoder.up.{level}.upsample.{rest}"), "copy"
    if re.match(r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.|(post_)?quant_conv\.", key):
        return key, "copy"
    raise SFDError(f"VAE weight {key!r} has no original-layout name")


def vae_entries(keys, config) -> list[Entry]:
    n_up = len(config["up_block_types"])
    out = []
    for k in keys:
        name, op = vae_key(k, n_up)
        out.append(Entry(VAE_PREFIX + name, "vae", (k,), op))
    return out


# --------------------------------------------------------------------------------------------------- text encoders
def _text_model_key(key: str) -> str:
    """transformers >= 5.6 flattens CLIPTextModel (no `text_model.` level); the single file always has it."""
    return key if key.startswith("text_model.") or key.startswith("text_projection") else "text_model." + key


def clip_entries(keys, component: str, prefix: str) -> list[Entry]:
    """OpenAI CLIP text encoders (SD 1.x, SDXL's first) are stored under their transformers names."""
    return [Entry(prefix + _text_model_key(k), component, (k,)) for k in keys]


_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}
_OPEN_CLIP_TOP = {"text_model.embeddings.token_embedding.weight": ("token_embedding.weight", "copy"),
                  "text_model.embeddings.position_embedding.weight": ("positional_embedding", "copy"),
                  "text_model.final_layer_norm.weight": ("ln_final.weight", "copy"),
                  "text_model.final_layer_norm.bias": ("ln_final.bias", "copy"),
                  "text_projection.weight": ("text_projection", "transpose")}


def open_clip_entries(keys, component: str, prefix: str) -> list[Entry]:
    """OpenCLIP text encoders (SD 2.x, SDXL's second) fuse q, k and v into one in_proj and store the projection
    transposed (x @ text_projection)."""
    named = {_text_model_key(k): k for k in keys}
    out, used = [], set()
    for name, (orig, op) in _OPEN_CLIP_TOP.items():
        if name in named:
            out.append(Entry(prefix + orig, component, (named[name],), op))
            used.add(name)
    for name, key in named.items():
        m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", name)
        if name in used or not m:
            continue
        i, module, kind = m.groups()
        block = f"{prefix}transformer.resblocks.{i}."
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            if module == "self_attn.q_proj":
                qkv = tuple(named[f"text_model.encoder.layers.{i}.self_attn.{p}_proj.{kind}"] for p in "qkv")
                out.append(Entry(f"{block}attn.in_proj_{kind}", component, qkv, "cat"))
            used.add(name)
        elif module in _OPEN_CLIP_LAYER:
            out.append(Entry(f"{block}{_OPEN_CLIP_LAYER[module]}.{kind}", component, (key,)))
            used.add(name)
    left = sorted(set(named) - used)
    if left:
        raise SFDError(f"text encoder weight {left[0]!r} has no OpenCLIP single-file name")
    return out
