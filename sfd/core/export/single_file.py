"""Single-file checkpoints of Stable Diffusion 1.x/2.x and SDXL pipelines, in the original layout (sfd/core/export/keys.py).

`layout_entries(layout, pipe)` is every key of the file with the diffusers weight(s) it holds; `to_single_file`
writes a pipeline's weights through it and `from_single_file_state` reads them back (the other direction of the same
table, for the round-trip tests and for anyone who wants diffusers state dicts from our files).
"""

from __future__ import annotations

from sfd.kernel.errors import SFDError
from sfd.core.export.keys import UNET_PREFIX, Entry, clip_entries, open_clip_entries, unet_entries, vae_entries


def _text_encoder_entries(layout: str, pipe) -> list[Entry]:
    """SD 1.x: OpenAI CLIP under cond_stage_model.transformer; SD 2.x: OpenCLIP (gelu, where CLIP-L uses quick_gelu)
    under cond_stage_model.model; SDXL: CLIP-L and OpenCLIP bigG under conditioner.embedders.0 / .1."""
    te = pipe.text_encoder
    keys = list(te.state_dict())
    if layout == "sdxl":
        te2 = pipe.text_encoder_2
        return (clip_entries(keys, "text_encoder", "conditioner.embedders.0.transformer.")
                + open_clip_entries(list(te2.state_dict()), "text_encoder_2", "conditioner.embedders.1.model."))
    if te.config.hidden_act == "gelu":
        return open_clip_entries(keys, "text_encoder", "cond_stage_model.model.")
    return clip_entries(keys, "text_encoder", "cond_stage_model.transformer.")


LAYOUTS = ("sd", "sdxl")  # the original single-file layouts (a family's `single_file_layout`)


def layout_entries(layout: str, pipe, unet_only: bool = False) -> list[Entry]:
    """Every key of the single file of `pipe` in `layout` ("sd" or "sdxl"), with the weights it holds."""
    if layout not in LAYOUTS:
        raise SFDError(f"no single-file layout {layout!r}: Stable Diffusion 1.x/2.x ('sd') and SDXL ('sdxl') have one")
    unet = pipe.unet
    entries = unet_entries(list(unet.state_dict()), dict(unet.config))
    if not unet_only:
        entries += vae_entries(list(pipe.vae.state_dict()), dict(pipe.vae.config)) + _text_encoder_entries(layout, pipe)
    names = [e.original for e in entries]
    if len(set(names)) != len(names):  # two weights under one name would silently lose one of them
        dup = next(n for n in names if names.count(n) > 1)
        raise SFDError(f"two weights map to the single-file key {dup!r}")
    return entries


def _pack(entry: Entry, tensors: list):
    import torch

    if entry.op == "cat":
        return torch.cat(tensors, dim=0)
    if entry.op == "conv":
        return tensors[0][:, :, None, None]
    if entry.op == "transpose":
        return tensors[0].T
    return tensors[0]


def to_single_file(layout: str, pipe, unet_only: bool = False, dtype=None) -> dict:
    """{single-file key: tensor} of the pipeline's UNet, VAE and text encoders (contiguous, ready for safetensors)."""
    states = {c: getattr(pipe, c).state_dict() for c in ("unet", "vae", "text_encoder", "text_encoder_2")
              if getattr(pipe, c, None) is not None}
    out = {}
    for e in layout_entries(layout, pipe, unet_only):
        t = _pack(e, [states[e.component][s] for s in e.sources]).detach()
        out[e.original] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous().clone()
    return out


def from_single_file_state(layout: str, pipe, state: dict) -> dict[str, dict]:
    """{component: diffusers state dict} read back from a single-file state dict through the same table; `pipe` gives
    the shapes (a pipeline of the same architecture). Missing or extra keys are errors."""
    entries = layout_entries(layout, pipe, unet_only=not any(not k.startswith(UNET_PREFIX) for k in state))
    wanted = {e.original for e in entries}
    extra, missing = sorted(set(state) - wanted), sorted(wanted - set(state))
    if extra or missing:
        raise SFDError(f"single file does not fit the pipeline: {len(missing)} missing, {len(extra)} unexpected keys "
                       f"(e.g. {(missing or extra)[0]!r})")
    out: dict[str, dict] = {}
    for e in entries:
        t = state[e.original]
        if e.op == "cat":
            parts = t.chunk(len(e.sources), dim=0)
        elif e.op == "conv":
            parts = (t[:, :, 0, 0],)
        elif e.op == "transpose":
            parts = (t.T,)
        else:
            parts = (t,)
        for key, part in zip(e.sources, parts):
            out.setdefault(e.component, {})[key] = part.contiguous()
    return out
