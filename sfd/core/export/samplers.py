"""Sampler settings a UI user cannot get wrong: a ComfyUI workflow (API format) and an AUTOMATIC1111 settings note.

A SiD one-step generator is one Euler step from its noise level sigma_init to 0 with guidance 1 (DESIGN.md 2.3).
ComfyUI: `SDTurboScheduler` (1 step) gives [sigma(999), 0] and `SetFirstSigma` replaces the first entry, so the
sigmas are [sigma_init, 0]; `SamplerCustom` with the `euler` sampler and cfg 1 runs that step. Node names, inputs and
option values were checked against ComfyUI's source (tests/test_export.py records the commits); at sigma_init
ComfyUI's discrete model sampling calls the network at timestep t_init, as SiD does.
"""

from __future__ import annotations

from dataclasses import dataclass

COMFY_LATENT_FACTOR = 8  # ComfyUI's EmptyLatentImage always makes width/8 x height/8 latents


@dataclass(frozen=True)
class Recipe:
    """How an exported model is sampled: one step at `sigma` (one-step models) or `steps` at `cfg` (multi-step)."""

    one_step: bool
    sigma: float | None  # sigma_init of a one-step model
    t_init: float | None  # the network's timestep at sigma_init
    steps: int
    cfg: float
    prediction_type: str  # epsilon | v_prediction
    latent_size: int  # the network's latent side
    prompt: str


def _nodes(ids):
    return {str(i): {"class_type": c, "inputs": inp} for i, (c, inp) in enumerate(ids, start=1)}


def comfy_workflow(recipe: Recipe, loader: dict) -> dict:
    """API-format workflow (the JSON ComfyUI's /prompt endpoint takes, and its "Load" opens): `loader` names the files,
    {"checkpoint": NAME} for a full single file, plus {"unet": NAME} for a UNet-only file or {"lora": NAME} for an
    adapter applied to the checkpoint's model. Node 1 is the checkpoint loader; links are [node id, output index]."""
    nodes = [("CheckpointLoaderSimple", {"ckpt_name": loader["checkpoint"]})]
    model = ["1", 0]
    if "unet" in loader:
        nodes.append(("UNETLoader", {"unet_name": loader["unet"], "weight_dtype": "default"}))
        model = [str(len(nodes)), 0]
    if "lora" in loader:
        nodes.append(("LoraLoaderModelOnly", {"model": model, "lora_name": loader["lora"], "strength_model": 1.0}))
        model = [str(len(nodes)), 0]
    if recipe.prediction_type == "v_prediction":  # ComfyUI guesses SD 2.x's parameterisation; say it
        nodes.append(("ModelSamplingDiscrete", {"model": model, "sampling": "v_prediction", "zsnr": False}))
        model = [str(len(nodes)), 0]
    n = len(nodes)
    size = recipe.latent_size * COMFY_LATENT_FACTOR
    nodes += [("CLIPTextEncode", {"text": recipe.prompt, "clip": ["1", 1]}),
              ("CLIPTextEncode", {"text": "", "clip": ["1", 1]}),
              ("EmptyLatentImage", {"width": size, "height": size, "batch_size": 1})]
    pos, neg, latent = [str(n + 1), 0], [str(n + 2), 0], [str(n + 3), 0]
    if recipe.one_step:
        nodes += [("SDTurboScheduler", {"model": model, "steps": 1, "denoise": 1.0}),
                  ("SetFirstSigma", {"sigmas": [str(n + 4), 0], "sigma": round(recipe.sigma, 6)}),
                  ("KSamplerSelect", {"sampler_name": "euler"}),
                  ("SamplerCustom", {"model": model, "add_noise": True, "noise_seed": 0, "cfg": 1.0, "positive": pos,
                                     "negative": neg, "sampler": [str(n + 6), 0], "sigmas": [str(n + 5), 0],
                                     "latent_image": latent})]
    else:
        nodes.append(("KSampler", {"model": model, "seed": 0, "steps": recipe.steps, "cfg": recipe.cfg, "sampler_name": "euler",
                                   "scheduler": "normal", "positive": pos, "negative": neg, "latent_image": latent,
                                   "denoise": 1.0}))
    nodes += [("VAEDecode", {"samples": [str(len(nodes)), 0], "vae": ["1", 2]}),
              ("SaveImage", {"images": [str(len(nodes) + 1), 0], "filename_prefix": "sfd"})]
    return _nodes(nodes)


def a1111_note(recipe: Recipe, files: str) -> str:
    """AUTOMATIC1111 settings. Its k-diffusion sampler builds Karras sigmas from Settings > Sampler parameters'
    "sigma max" when the schedule type is not Automatic (modules/sd_samplers_kdiffusion.py `get_sigmas`); one Karras
    step is [sigma_max, 0], so sigma max = sigma_init gives the one Euler step from sigma_init."""
    lines = [f"AUTOMATIC1111 / Forge settings for {files}", ""]
    if not recipe.one_step:
        return "\n".join(lines + [f"Sampler: Euler (any works), Sampling steps: {recipe.steps}, CFG Scale: {recipe.cfg:g}.", ""])
    lines += ["txt2img:",
              "  Sampling method: Euler",
              "  Schedule type: Karras (A1111 >= 1.9: next to the sampler; older: Settings > Sampler parameters > "
              "scheduler type)",
              "  Sampling steps: 1",
              "  CFG Scale: 1",
              f"Settings > Sampler parameters > sigma max: {recipe.sigma:.6f} (sigma min: leave 0)",
              "",
              f"One Euler step from sigma {recipe.sigma:.6f} to 0: the network sees the noise of that level at timestep "
              f"{recipe.t_init:g} (of 1000), which is how the generator was distilled. Other samplers, more steps or a "
              "CFG above 1 do not sample this model correctly.",
              "Set sigma max back to 0 for other models."]
    if recipe.prediction_type == "v_prediction":
        lines.append("This is a v-prediction model: A1111 needs its .yaml config beside the file (SD 2.x v: "
                     "v2-inference-v.yaml, renamed to the checkpoint's name).")
    return "\n".join(lines) + "\n"
