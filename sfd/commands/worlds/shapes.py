"""Builders of the shapes world: the teacher's training loop, evaluation, saving and loading, and `train_world`, which
`sfd train-teacher shapes` runs. This is the module callers import: it re-exports the world's data and vocabulary
(sfd/core/worlds/shapes.py), the CLIP and VAE stages (shapes_clip_vae.py) and the teacher structures (shapes_teachers.py)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sfd.kernel.ema import EMA

from sfd.core.worlds.shapes import (  # noqa: F401  the world's data and vocabulary, used here and by callers
    COLOURS, COLOUR_JITTER, COLOUR_ONLY_TEMPLATES, COLOUR_PROMPT, DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, GREY_RANGE, IMAGE_SIZE, RGB, SHAPES, SHAPE_ONLY_TEMPLATES, SHAPE_PROMPT, SIZE_RANGE, SUPERSAMPLE, ShapesBatch, TEMPLATES, all_prompts, caption, next_value, render, to_unit, world_meta,
)

from sfd.commands.worlds.shapes_clip_vae import (  # noqa: F401  callers reach these as shapes.X
    CLIP_MEAN, CLIP_STD, ClipTrainConfig, VaeTrainConfig, build_vae, clip_accuracy, clip_model_cfg, train_clip, train_vae,
)
from sfd.commands.worlds.shapes_teachers import (  # noqa: F401  callers reach these as shapes.X
    TEACHER_PARTS, SD3TeacherParts, SDTeacherParts, SDXLTeacherParts, TeacherTrainConfig, build_text_encoder, build_unet, epsilon_loss,
    flow_loss, make_pipeline, scheduler_config, teacher_config,
)


@torch.no_grad()
def evaluate_teacher(
    pipe,
    clip,
    n_per_prompt: int = 32,
    seed: int = 0,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    batch_size: int = 128,
) -> dict:
    """Per colour x shape prompt ("a {colour} {shape}"), how often the tiny CLIP sees the named colour and shape.

    Image k of prompt p uses its own generator seeded seed * 10**6 + p * 1000 + k, so any subset of the
    grid can be regenerated alone. Colour and shape are zero-shot votes among all COLOURS / SHAPES.
    """
    from sfd.core.families import family_of_pipeline

    prompts = all_prompts()
    extra = family_of_pipeline(type(pipe).__name__).sampler_kwargs(pipe)
    jobs = [(p, k) for p in range(len(prompts)) for k in range(n_per_prompt)]
    colour_ok = torch.zeros(len(prompts), n_per_prompt)
    shape_ok = torch.zeros(len(prompts), n_per_prompt)
    pipe.set_progress_bar_config(disable=True)
    t0 = time.perf_counter()
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i : i + batch_size]
        gens = [torch.Generator().manual_seed(seed * 10**6 + p * 1000 + k) for p, k in chunk]
        images = pipe(
            prompt=[prompts[p][2] for p, _ in chunk], height=IMAGE_SIZE, width=IMAGE_SIZE,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=gens, output_type="pt", **extra,
        ).images
        colour = clip.zero_shot(images, COLOURS, (COLOUR_PROMPT,)).pred
        shape = clip.zero_shot(images, SHAPES, (SHAPE_PROMPT,)).pred
        for j, (p, k) in enumerate(chunk):
            colour_ok[p, k] = float(colour[j] == prompts[p][0])
            shape_ok[p, k] = float(shape[j] == prompts[p][1])
    per_prompt = {
        prompt: {"colour": float(colour_ok[p].mean()), "shape": float(shape_ok[p].mean()),
                 "both": float((colour_ok[p] * shape_ok[p]).mean())}
        for p, (_, _, prompt) in enumerate(prompts)
    }
    col, shp = colour_ok.mean(1), shape_ok.mean(1)
    return {
        "per_prompt": per_prompt,
        "colour_min": float(col.min()), "colour_mean": float(col.mean()),
        "shape_min": float(shp.min()), "shape_mean": float(shp.mean()),
        "n_per_prompt": n_per_prompt, "seed": seed, "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale, "seconds": time.perf_counter() - t0,
    }


@torch.no_grad()
def _encode_dataset(vae, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(posterior mean, posterior std, colour ids, shape ids) of n fresh renders."""
    batch = render(n, torch.Generator().manual_seed(seed))
    means, stds = [], []
    for chunk in batch.images.split(512):
        post = vae.encode(chunk).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds), batch.colour_ids, batch.shape_ids


def train_teacher(vae, tokenizer, cfg: TeacherTrainConfig = TeacherTrainConfig(), progress: bool = True,
                  snapshot_every: int = 0, on_snapshot=None, family: str = "sd"):
    """Training of the denoising network and the text encoder(s) together, on VAE latents, with the family's
    objective (epsilon prediction, or rectified flow for SD3); returns (EMA network, [EMA text encoders], stats).
    `on_snapshot(step, network, text_encoders)` gets EMA copies. `family` picks the teacher's structure
    (TEACHER_PARTS): Stable Diffusion's, SDXL's or SD3's."""
    parts = TEACHER_PARTS[family]
    torch.manual_seed(cfg.seed)
    unet, encoders = parts.unet(cfg, vae.config.latent_channels), parts.text_encoders(cfg)
    for m in (unet, *encoders):
        m.train()
    emas = [EMA(m, cfg.ema_decay) for m in (unet, *encoders)]
    params = [p for m in (unet, *encoders) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    t_enc = time.perf_counter()
    mean, std, colour_ids, shape_ids = _encode_dataset(vae, cfg.dataset_size, cfg.seed + 1)
    encode_seconds = time.perf_counter() - t_enc
    scale = vae.config.scaling_factor
    # Token ids of every (colour, shape, template) caption, then of "" (the unconditional caption).
    texts = [caption(c, s, t) for c in range(len(COLOURS)) for s in range(len(SHAPES)) for t in range(len(TEMPLATES))] + [""]
    tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    uncond = len(texts) - 1
    gen = torch.Generator().manual_seed(cfg.seed)

    def ema_copies():
        fresh = [parts.unet(cfg, vae.config.latent_channels), *parts.text_encoders(cfg)]
        return [e.copy_to(m).eval() for e, m in zip(emas, fresh)]

    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.steps + 1), desc="teacher", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, step / cfg.warmup)
        idx = torch.randint(cfg.dataset_size, (cfg.batch_size,), generator=gen)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale
        template = torch.randint(len(TEMPLATES), (cfg.batch_size,), generator=gen)
        row = (colour_ids[idx] * len(SHAPES) + shape_ids[idx]) * len(TEMPLATES) + template
        dropped = torch.rand(cfg.batch_size, generator=gen) < cfg.cfg_dropout
        row = torch.where(dropped, uncond, row)
        loss = parts.loss(unet, z0, parts.unet_kwargs(encoders, tokens[row], dropped), gen, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for e, m in zip(emas, (unet, *encoders)):
            e.update(m)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if snapshot_every and on_snapshot and step % snapshot_every == 0:
            copies = ema_copies()
            on_snapshot(step, copies[0], copies[1:])
    seconds = time.perf_counter() - t0
    unet, *encoders = ema_copies()
    stats = {"train_seconds": seconds, "encode_dataset_seconds": encode_seconds, "seconds_per_step": seconds / cfg.steps,
             "family": family, "unet_params": sum(p.numel() for p in unet.parameters()),
             "text_encoder_params": sum(p.numel() for e in encoders for p in e.parameters()), **asdict(cfg)}
    return unet, encoders, stats


def save_teacher(pipe, path: str | Path, meta: dict, dtype: torch.dtype = torch.float16) -> None:
    """Save a StableDiffusionPipeline folder (safetensors, weights in `dtype`) plus sfd_world.json.

    The tokenizer folder is rewritten as vocab.json/merges.txt (see `tokenizer.save_clip_tokenizer`).
    The text encoder's config keeps dtype float32 although its weights are stored in `dtype`: transformers
    loads a model in its config's dtype while diffusers loads in float32, and a plain
    `StableDiffusionPipeline.from_pretrained(path)` must run on a CPU. The pipeline passed in is left in float32.
    """
    from sfd.core.worlds.tokenizer import save_clip_tokenizer

    path = Path(path)
    from sfd.core.models import quiet_diffusers

    with quiet_diffusers():
        pipe.to(dtype=dtype)
        try:
            pipe.save_pretrained(path, safe_serialization=True)
        finally:
            pipe.to(dtype=torch.float32)
    for name in ("tokenizer", "tokenizer_2"):
        if (path / name).is_dir():
            shutil.rmtree(path / name)
            save_clip_tokenizer(path / name, pipe.tokenizer.model_max_length)
    for name in ("text_encoder", "text_encoder_2"):
        te_config = path / name / "config.json"
        if te_config.is_file():
            cfg = json.loads(te_config.read_text())
            cfg.update({k: "float32" for k in ("dtype", "torch_dtype") if k in cfg})
            te_config.write_text(json.dumps(cfg, indent=2))
    (path / "sfd_world.json").write_text(json.dumps(meta, indent=2))


def load_teacher(path: str | Path, device: str = "cpu"):
    """The world's teacher as a float32 pipeline of its family (offline)."""
    from sfd.core.families import load_model

    return load_model(str(path), device)[1]


@torch.no_grad()
def time_components(pipe, batch: int = 64, num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
                    guidance_scale: float = DEFAULT_GUIDANCE_SCALE, repeats: int = 3) -> dict:
    """Best-of-`repeats` seconds of the parts of sampling at one batch size, and the estimated speed-up
    of a one-step generator (text encode + 1 UNet call + decode) over the default sampler."""
    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    from sfd.core.concepts import as_condition
    from sfd.core.families import family_of_pipeline
    from sfd.kernel.tree import tree_cat

    family = family_of_pipeline(type(pipe).__name__)
    prompts = [caption(i % len(COLOURS), i % len(SHAPES)) for i in range(batch)]

    def encode():
        return as_condition(family.encode(pipe, prompts))

    cond = encode()
    den = family.teacher_denoiser(pipe)  # the network as SFD calls it (UNet or transformer), at a mid noise level
    z = torch.randn(batch, *family.latent_shape(pipe), generator=torch.Generator().manual_seed(0))
    sigma = torch.ones(batch)
    out = {
        "batch": batch,
        "text_encode": best(encode),
        "unet": best(lambda: den(z, sigma, cond)),
        "unet_cfg_batch": best(lambda: den(torch.cat([z, z]), torch.cat([sigma, sigma]), tree_cat([cond, cond]))),
        "vae_decode": best(lambda: pipe.vae.decode(z / pipe.vae.config.scaling_factor)),
    }
    pipe.set_progress_bar_config(disable=True)
    out["sampler"] = best(lambda: pipe(prompt=prompts, height=IMAGE_SIZE, width=IMAGE_SIZE, num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(0), output_type="pt",
                                       **family.sampler_kwargs(pipe)))
    out["one_step_estimate"] = out["text_encode"] + out["unet"] + out["vae_decode"]
    out["speedup_estimate"] = out["sampler"] / out["one_step_estimate"]
    out.update(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, threads=torch.get_num_threads())
    return out


def train_world(
    out_dir: str | Path,
    seed: int = 0,
    progress: bool = True,
    clip_cfg: ClipTrainConfig = ClipTrainConfig(),
    vae_cfg: VaeTrainConfig = VaeTrainConfig(),
    teacher_cfg: TeacherTrainConfig = TeacherTrainConfig(),
    eval_per_prompt: int = 32,
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    family: str = "sd",
    components_from: str | Path | None = None,
) -> dict:
    """Train the whole world into out_dir/clip and out_dir/teacher; returns (and records) the statistics.

    Stages: the CLIP evaluator, the VAE, then UNet + text encoder(s) on the VAE's latents. The teacher is
    evaluated after a save/load round trip, so the numbers describe the half-precision weights that ship.
    `seed` replaces the seed of every stage's config. A run that was stopped continues from its last finished
    stage: an existing out_dir/clip and out_dir/vae_stage (the VAE until the teacher is saved) are reused.
    `family` is the teacher's structure (TEACHER_PARTS). `components_from`: an existing world whose CLIP and VAE
    are reused, so that only the teacher is trained (an SDXL-structured teacher beside the bundled world).
    """
    from sfd.evaluators.clip import ClipEvaluator

    from sfd.core.worlds.tokenizer import build_clip_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    if components_from is not None:
        from diffusers import AutoencoderKL

        src = Path(components_from)
        clip = ClipEvaluator.from_pretrained(src / "clip")
        clip_stats = {"reused_from": str(src / "clip")}
        vae = AutoencoderKL.from_pretrained(src / "teacher" / "vae", use_safetensors=True).float().eval().requires_grad_(False)
        vae_stats = {"reused_from": str(src / "teacher" / "vae")}
    elif (out / "clip" / "open_clip_config.json").is_file():  # a finished stage of an interrupted run
        clip = ClipEvaluator.from_pretrained(out / "clip")
        clip_stats = clip.extra.get("training", {})
    else:
        clip, clip_stats = train_clip(replace(clip_cfg, seed=seed), progress)
        clip_stats["zero_shot"] = clip_accuracy(clip)
        clip.extra = {"world": "shapes", "training": clip_stats}
        clip.save_pretrained(out / "clip")
        clip = ClipEvaluator.from_pretrained(out / "clip")
        clip_stats["zero_shot_saved"] = clip_accuracy(clip)  # after the half-precision round trip
        clip.extra["training"] = clip_stats
        clip.save_pretrained(out / "clip")

    vae_stage = out / "vae_stage"
    if components_from is not None:
        pass
    elif (vae_stage / "config.json").is_file():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_stage, use_safetensors=True).eval().requires_grad_(False)
        vae_stats = json.loads((vae_stage / "training.json").read_text())
    else:
        vae, vae_stats = train_vae(replace(vae_cfg, seed=seed), progress)
        vae.save_pretrained(vae_stage, safe_serialization=True)
        (vae_stage / "training.json").write_text(json.dumps(vae_stats, indent=2))
    tokenizer = build_clip_tokenizer(model_max_length=TEACHER_PARTS[family].text_length)
    unet, encoders, teacher_stats = train_teacher(vae, tokenizer, replace(teacher_cfg, seed=seed), progress, family=family)
    training = {"seed": seed, "clip": clip_stats, "vae": vae_stats, "teacher": teacher_stats,
                "train_seconds_total": time.perf_counter() - t_start, "torch_threads": torch.get_num_threads()}
    pipe = TEACHER_PARTS[family].pipeline(vae, encoders, tokenizer, unet)
    meta = world_meta(num_inference_steps, guidance_scale, training=training, family=family, **TEACHER_PARTS[family].extra_meta)
    if components_from is not None:
        meta["clip"] = str(Path(components_from) / "clip")
    save_teacher(pipe, out / "teacher", meta)
    shutil.rmtree(vae_stage, ignore_errors=True)  # the VAE now lives in teacher/vae

    pipe = load_teacher(out / "teacher")
    meta["evaluation"] = evaluate_teacher(pipe, clip, eval_per_prompt, seed=seed, num_inference_steps=num_inference_steps,
                                          guidance_scale=guidance_scale)
    meta["timings_seconds"] = time_components(pipe, 64, num_inference_steps, guidance_scale)
    (out / "teacher" / "sfd_world.json").write_text(json.dumps(meta, indent=2))
    return {k: meta[k] for k in ("training", "evaluation", "timings_seconds")}
