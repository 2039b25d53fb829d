"""The generator adapter of a LoRA run in Kohya's key format (`lora_unet_..._to_q.lora_down.weight` + `.alpha`), which
A1111, ComfyUI and diffusers' `load_lora_weights` all read; diffusers' PEFT-keyed files do not load reliably in the
UIs (DESIGN.md section 7). The conversion is diffusers' own `convert_state_dict_to_kohya`; this module checks what
goes in and what comes out.
"""

from __future__ import annotations

from pathlib import Path

from sfd.kernel.errors import SFDError

LORA_FILE = Path("lora") / "pytorch_lora_weights.safetensors"


def kohya_state(lora_file: Path) -> dict:
    """{kohya key: tensor} of a diffusers/PEFT LoRA file of a UNet. Our adapters use lora_alpha = rank (sfd/core/adapters.py),
    so each `.alpha` is its rank: the scale alpha / rank = 1 that diffusers applied when the folder was sampled."""
    import torch
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import load_file

    state = load_file(str(lora_file))
    other = [k for k in state if not k.startswith("unet.")]
    if other:  # text-encoder adapters are not what SFD trains; a file with them is not ours
        raise SFDError(f"{lora_file}: {other[0]!r} is not a UNet adapter weight; kohya-lora exports the generator's UNet adapter")
    kohya = convert_state_dict_to_kohya(state)
    downs = [k for k in kohya if k.endswith(".lora_down.weight")]
    ups = [k for k in kohya if k.endswith(".lora_up.weight")]
    if not downs or len(downs) != len(ups) or len(kohya) != 3 * len(downs) or len(downs) * 2 != len(state):
        raise SFDError(f"{lora_file}: {len(state)} adapter weights did not convert to Kohya pairs with alphas")
    bad = [k for k in kohya if not k.startswith("lora_unet_")]
    if bad:
        raise SFDError(f"{lora_file}: converted key {bad[0]!r} is not a Kohya UNet key")
    # Kohya writes alpha as a float scalar; diffusers' converter gives an int64 one.
    return {k: (v.to(torch.float32) if k.endswith(".alpha") else v.contiguous()) for k, v in kohya.items()}
