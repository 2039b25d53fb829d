"""Memory and step time of SFD at real size (SD-1.5 860M, SDXL 2.6B, SD3.5-Medium 2.5B; FLUX.1 12B on paper), full and LoRA
roles, random weights.

  python benchmarks/sd15_scale.py --paper                                # static memory from parameter counts, every mode
  python benchmarks/sd15_scale.py --model sd15 --mode lora --steps 1     # one measured configuration (CPU fp32 or CUDA)
  python benchmarks/sd15_scale.py --all --resolutions 256,512            # every (model, mode) in its own process
  python benchmarks/sd15_scale.py --tiny --steps 2                       # the same code path with a tiny UNet (smoke test)
  python benchmarks/sd15_scale.py --model sd15 --mode lora --steps 1 --robust  # robust SFD's preset: memory and step time
  python benchmarks/sd15_scale.py --cli --resolution 256                 # the whole `sfd erase --single-stage --lora --steps 1`
                                                                          # on a written SD-1.5 folder, peak RSS per phase

Nothing is downloaded: the UNets are built from the published configs below with random weights, and the text
conditioning is random tensors of the real shapes (77 x 768 for SD-1.5; 77 x 2048, a pooled 1280 and 6 time ids for
SDXL; 333 x 4096 and a pooled 2048 for SD3.5), which cost the network what real prompts cost. What runs is what `sfd erase` runs for a model this big: gradient
checkpointing, batch 1 retain + 1 forget, the SD stage-2 preset's guidance (a guided teacher and fake score).
On a CPU everything is fp32 (bf16 is emulated and very slow on AVX2-only CPUs) and the peak resident memory of the
process (ru_maxrss) stands in for GPU memory: the same weights, gradients, optimizer states and activations. On
CUDA the frozen UNet is bf16 with bf16 autocast, and the peak is torch.cuda.max_memory_allocated.
Each `--all` configuration runs in a fresh process so that peaks do not mix; one that cannot fit this machine's
memory (full mode at SDXL size) is counted on paper instead (`--paper`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# runwayml/stable-diffusion-v1-5 unet/config.json, written out so that no download is needed.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8,
)
# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    use_linear_projection=True,
)
# stabilityai/stable-diffusion-3.5-medium transformer/config.json (an SD3Transformer2DModel, rectified flow).
SD35M_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
# black-forest-labs/FLUX.1-dev transformer/config.json: counted on paper only (12B parameters).
FLUX_DEV_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
)
MODELS = {"sd15": SD15_UNET, "sdxl": SDXL_UNET, "sd35m": SD35M_TRANSFORMER, "flux": FLUX_DEV_TRANSFORMER, "tiny": TINY_UNET}
NATIVE_RESOLUTION = {"sd15": 512, "sdxl": 1024, "sd35m": 1024, "flux": 1024, "tiny": 64}
TRANSFORMERS = ("sd35m", "flux")
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon")
GIB = 2**30


def build_network(model: str, **changes):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    cls = {"sd35m": SD3Transformer2DModel, "flux": FluxTransformer2DModel}.get(model, UNet2DConditionModel)
    return cls(**{**MODELS[model], **changes})


def lora_targets(model: str) -> list[str]:
    from sfd.core.families.flow import FLOW_LORA_TARGETS
    from sfd.core.families.sd import StableDiffusionFamily

    return list(FLOW_LORA_TARGETS) if model in TRANSFORMERS else StableDiffusionFamily().lora_targets()


def count_params(model: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_network(model).parameters())


def lora_params(model: str, rank: int) -> int:
    """Parameters of one LoRA adapter with the family's default targets, counted on the meta device."""
    from sfd.core import adapters

    with torch.device("meta"):
        net = build_network(model)
        adapters.add_adapter(net, "g", rank, lora_targets(model))
        return sum(p.numel() for p in adapters.adapter_parameters(net, "g"))


def paper_estimate(n_params: int, frozen_bytes: int = 2, mode: str = "full", n_lora: int = 0) -> dict:
    """Static memory from parameter counts: the frozen network (bf16 on a GPU), and per trained network its fp32
    weights, gradients and Adam's two moments, plus the generator's fp32 EMA. Full mode trains two whole UNets;
    LoRA mode trains two adapters on the one frozen UNet."""
    trained = n_params if mode == "full" else n_lora
    parts = {
        "frozen_unet": frozen_bytes * n_params,
        "generator_weights_grads_adam": 16 * trained,
        "fake_score_weights_grads_adam": 16 * trained,
        "generator_ema": 4 * trained,
    }
    parts = {k: v / GIB for k, v in parts.items()}
    parts["total_static"] = sum(parts.values())
    return parts


def conditions(model: str, device: str):
    """Random text conditioning with the real shapes, through the same TextForgetSpec the CLI builds."""
    from sfd.core.concepts import TextForgetSpec

    cfg = MODELS[model]
    spec = TextForgetSpec.build(["nudity"], "a person, dressed", ["a photo of a dog", "a painting of a city"])
    gen = torch.Generator().manual_seed(0)

    def encode(prompts):
        n = len(prompts)
        if model == "sd35m":  # CLIP-L + CLIP-G padded to T5's width, then T5's 256 tokens; pooled CLIP-L + CLIP-G
            return {"encoder_hidden_states": torch.randn(n, 77 + 256, cfg["joint_attention_dim"], generator=gen).to(device),
                    "pooled_projections": torch.randn(n, cfg["pooled_projection_dim"], generator=gen).to(device)}
        out = {"encoder_hidden_states": torch.randn(n, 77, cfg["cross_attention_dim"], generator=gen).to(device)}
        if cfg.get("addition_embed_type") == "text_time":
            pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
            out["added_cond_kwargs"] = {"text_embeds": torch.randn(n, pooled, generator=gen).to(device),
                                        "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]]).expand(n, -1).to(device)}
        return out

    return spec.encode(encode)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB


def robust_adversary(roles, cond, config):
    """Robust SFD's component as `sfd erase --robust` builds it (sfd.core.robust), in the `conditioning` space: the
    conditioning here is random tensors, with no text encoder for the token spaces to run through (they add that
    encoder's forward and backward per inner step; the UNet's cost is the same)."""
    from sfd.core.robust import AdversarialForget, FrozenBase, space_generator
    from sfd.core.robust_spaces import ConditioningDelta

    forget = cond.forget_and_override(forget_only=True)[0]
    space = ConditioningDelta(forget, config.robust_budget, space_generator(config))
    return AdversarialForget([space], FrozenBase(roles), forget, config)


def measure(model: str, mode: str, resolution: int, steps: int, device: str, rank: int = 16, robust: bool = False) -> dict:
    from sfd.core.config import preset
    from sfd.kernel.denoisers import Denoiser
    from sfd.kernel.generators import OneStepConvention
    from sfd.core.roles import FullRoles, LoraRoles
    from sfd.core.trainer import SFDTrainer

    cuda = device.startswith("cuda")
    latent = resolution // 8
    rss_start = peak_rss_gib()
    torch.manual_seed(0)
    unet = build_network(model) if model in TRANSFORMERS else build_network(model, sample_size=latent)
    n_params = sum(p.numel() for p in unet.parameters())
    if model in TRANSFORMERS:
        from sfd.pipelines.flow import sd3_velocity
        from sfd.kernel.denoisers import FlowDenoiser
        from sfd.kernel.schedules import FlowSchedule

        teacher = FlowDenoiser(unet, FlowSchedule(), sd3_velocity)
    else:
        teacher = Denoiser.from_unet_and_scheduler_config(unet, SD_SCHEDULER)
    channels = MODELS[model]["in_channels"]
    config = preset("sd3" if model in TRANSFORMERS else "sd", "erase").replace(batch_retain=1, batch_forget=1, steps=steps + 1).resolved(1.0)
    frozen = torch.bfloat16 if cuda else None
    common = dict(frozen_dtype=frozen, gradient_checkpointing=True)
    t0 = time.perf_counter()
    if mode == "lora":
        roles = LoraRoles(teacher, OneStepConvention(config.t_init), device, rank=rank, targets=lora_targets(model), **common)
        n_lora = sum(p.numel() for p in roles.generator_parameters())
    else:
        roles = FullRoles(teacher, OneStepConvention(config.t_init), device, **common)
        n_lora = 0
    del unet, teacher
    cond = conditions(model, device)
    if robust:  # the stage-2 preset's robust settings (its inner steps, every iteration), in the conditioning space
        config = config.replace(robust=True, robust_space="conditioning")
    adversary = robust_adversary(roles, cond, config) if robust else None
    trainer = SFDTrainer(roles, cond, config, device, autocast_dtype=torch.bfloat16 if cuda else None,
                         latent_shape=(channels, latent, latent), adversary=adversary)
    build_s = time.perf_counter() - t0
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):  # the first iteration warms up allocators and kernels; it is not timed
        t0 = time.perf_counter()
        trainer.step()
        sync()
        if i:
            times.append(time.perf_counter() - t0)
    out = {
        "model": model, "mode": mode, "robust": adversary.describe() if robust else None, "resolution": resolution, "latent": latent, "unet_params": n_params,
        "lora_rank": rank if mode == "lora" else None, "lora_params_per_adapter": n_lora or None,
        "batch": "1 retain + 1 forget", "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": "bf16 frozen, bf16 autocast" if cuda else "fp32", "torch_threads": torch.get_num_threads(),
        "build_seconds": build_s, "seconds_per_iteration": sorted(times)[len(times) // 2] if times else None, "steps_timed": steps,
        "static_counted_gib": paper_estimate(n_params, 2 if cuda else 4, mode, n_lora),
    }
    if cuda:
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    else:
        out["peak_rss_gib"] = peak_rss_gib()
        out["rss_before_build_gib"] = rss_start
    return out


def project(result: dict, resolution: int) -> dict:
    """GPU memory at `resolution` from a CPU fp32 measurement (the method README states): the static bytes counted
    for a bf16 frozen UNet, plus the measured activations (peak RSS - process baseline - fp32 static), scaled by
    the latent area and halved for bf16 activations."""
    static_fp32 = result["static_counted_gib"]["total_static"]
    activations = max(0.0, result["peak_rss_gib"] - result["rss_before_build_gib"] - static_fp32)
    n = result["unet_params"]
    n_lora = result["lora_params_per_adapter"] or 0
    static_gpu = paper_estimate(n, 2, result["mode"], n_lora)["total_static"]
    scale = (resolution / result["resolution"]) ** 2
    return {"resolution": resolution, "static_gib": static_gpu, "activations_gib": activations * scale / 2,
            "total_gib": static_gpu + activations * scale / 2, "from_cpu_resolution": result["resolution"]}


def write_sd15_pipeline(folder: str | Path, resolution: int, tiny: bool = False) -> Path:
    """A StableDiffusionPipeline folder with random weights: the real SD-1.5 UNet (sample_size = resolution / 8), a
    CLIP text encoder of SD-1.5's width (768) but one layer, and a small VAE with SD's factor 8 (the UNet is what
    costs memory; the text encoder and VAE are small at any size and run without gradients)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from sfd.core.worlds.tokenizer import VOCAB_SIZE, build_clip_tokenizer

    torch.manual_seed(0)
    model = "tiny" if tiny else "sd15"
    unet = build_network(model, sample_size=resolution // 8)
    width = MODELS[model]["cross_attention_dim"]
    text = CLIPTextModel(CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=1,
                                        num_attention_heads=8, max_position_embeddings=77, bos_token_id=49406,
                                        eos_token_id=49407, pad_token_id=49407, projection_dim=width))
    vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    sched = PNDMScheduler(**SD_SCHEDULER, skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=build_clip_tokenizer(), unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def traced_cli(argv: list[str]) -> None:
    """Run `sfd` in this process and print, as a JSON line, the peak resident memory up to the end of training
    (loading + iterations: the kernel's high-water mark, VmHWM, read when training returns) and of the whole command
    (VmHWM at exit). The mark is not reset in between (/proc/self/clear_refs would also erase the earlier peak from
    what GNU time reports); a whole-command peak above the training one is what saving added."""
    import sfd.core.erase
    from sfd.commands.cli import main as sfd_main

    phases: dict = {}
    run_training = sfd.core.erase.run_training

    def marked(*args, **kwargs):
        result = run_training(*args, **kwargs)
        phases["peak_until_training_end_gib"] = _status_kib("VmHWM") * 1024 / GIB
        phases["rss_at_training_end_gib"] = _status_kib("VmRSS") * 1024 / GIB
        return result

    sfd.core.erase.run_training = marked
    rc = sfd_main(argv)
    phases["peak_whole_command_gib"] = _status_kib("VmHWM") * 1024 / GIB
    print("PHASES " + json.dumps(phases), flush=True)
    sys.exit(rc)


def measure_cli(resolution: int, workdir: str, tiny: bool = False) -> dict:
    """`sfd erase --single-stage --lora --steps 1` on a random-weight SD-1.5 folder under GNU time (`/usr/bin/time -v`,
    the maximum resident size of the whole command), with the per-phase peaks of `traced_cli`."""
    work = Path(workdir)
    model = write_sd15_pipeline(work / "sd15-random", resolution, tiny=tiny)
    sfd_args = ["erase", "--model", str(model), "--single-stage", "--lora", "--steps", "1", "--forget", "nudity",
                "--override", "a person, dressed", "--out", str(work / "erased"), "--overwrite", "--quiet"]
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--traced-cli", "--", *sfd_args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    seconds = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"sfd erase failed ({r.returncode}): {r.stderr[-2000:]}")
    max_kib = next(int(line.split(":")[1]) for line in r.stderr.splitlines() if "Maximum resident set size" in line)
    phases = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("PHASES "))[len("PHASES "):])
    return {"command": "sfd " + " ".join(sfd_args), "resolution": resolution, "unet": "tiny" if tiny else "sd15 (860M, real config)",
            "gnu_time_max_rss_gib": max_kib * 1024 / GIB, "wall_seconds": seconds, **phases,
            "stdout_tail": r.stdout.strip().splitlines()[-3:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper", action="store_true", help="only the parameter-count estimates (UNets built on the meta device)")
    ap.add_argument("--model", choices=["sd15", "sdxl", "sd35m"], default="sd15")
    ap.add_argument("--mode", choices=["full", "lora"], default="lora")
    ap.add_argument("--tiny", action="store_true", help="tiny UNet (CPU smoke test of the same code path)")
    ap.add_argument("--resolution", type=int, default=256, help="image size in pixels (latents are 1/8)")
    ap.add_argument("--all", action="store_true", help="every (model, mode, --resolutions) that fits, each in its own process")
    ap.add_argument("--resolutions", default="256", help="with --all: comma-separated image sizes")
    ap.add_argument("--steps", type=int, default=1, help="timed SFD iterations after one warm-up iteration")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--robust", action="store_true", help="robust SFD (`sfd erase --robust`): the SD stage-2 preset's inner attack "
                                                          "on every iteration, in the conditioning space")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--cli", action="store_true", help="the whole `sfd erase --single-stage --lora --steps 1` command on a written "
                                                       "random-weight SD-1.5 folder at --resolution, under GNU time")
    ap.add_argument("--workdir", default="/tmp/sd15-cli", help="with --cli: where the pipeline folder and the output go")
    if len(sys.argv) > 1 and sys.argv[1] == "--traced-cli":  # the child of --cli: `sfd` itself, phases traced
        traced_cli(sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:])
    a = ap.parse_args()
    if a.cli:
        result = measure_cli(a.resolution, a.workdir, tiny=a.tiny)
    elif a.paper:
        result = {}
        for m in ("sd15", "sdxl", "sd35m", "flux"):
            n, n_lora = count_params(m), lora_params(m, a.rank)
            result[m] = {"unet_params": n, "lora_params_per_adapter": n_lora, "lora_rank": a.rank,
                         "full": paper_estimate(n, 2, "full"), "lora": paper_estimate(n, 2, "lora", n_lora)}
    elif a.all:
        result = {"runs": []}
        cpu_limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
        for m in ("sd15", "sdxl", "sd35m"):
            for mode in ("lora", "full"):
                n, n_lora = count_params(m), lora_params(m, a.rank)
                need = paper_estimate(n, 4, mode, n_lora)["total_static"]
                if not a.device.startswith("cuda") and need > 0.9 * cpu_limit:
                    result["runs"].append({"model": m, "mode": mode, "skipped": f"static {need:.1f} GiB counted > this machine's "
                                                                                  f"{cpu_limit:.0f} GiB"})
                    print(f"{m} {mode}: counted only ({need:.1f} GiB static in fp32)", flush=True)
                    continue
                for res in [int(r) for r in a.resolutions.split(",")]:
                    cmd = [sys.executable, __file__, "--model", m, "--mode", mode, "--resolution", str(res), "--steps", str(a.steps),
                           "--rank", str(a.rank), "--device", a.device]
                    print("running", " ".join(cmd[2:]), flush=True)
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    if r.returncode:
                        result["runs"].append({"model": m, "mode": mode, "resolution": res, "failed": r.stderr[-500:]})
                        continue
                    run = json.loads(r.stdout[r.stdout.index("{"):])
                    if "peak_rss_gib" in run:
                        run["gpu_projection"] = [project(run, NATIVE_RESOLUTION[m])]
                    result["runs"].append(run)
                    print(json.dumps({k: run[k] for k in ("model", "mode", "resolution", "seconds_per_iteration")}
                                     | {"peak": run.get("peak_rss_gib", run.get("peak_allocated_gib"))}), flush=True)
    else:
        model = "tiny" if a.tiny else a.model
        result = measure(model, a.mode, 64 if a.tiny else a.resolution, a.steps, a.device, a.rank, robust=a.robust)
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
