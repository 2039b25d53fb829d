"""Probe the negative-prompt control on one concept: do stronger attacks revive it on the guided-away teacher?

  python benchmarks/experiments/negative_control_probe.py --concept circle
  python benchmarks/experiments/negative_control_probe.py --concept circle --variants inversion:60:0.1:2,denoise:150:0.3,noise:10:0.1:8

The robustness table's weak defence (sfd.evaluators.robustness.NEGATIVE_GUIDANCE: the concept guided away from at 7.5
beside the prompt's guidance of 5) stays near its plain rate on circle under every attack of the table. This probe
attacks it alone, on the table's first (prompt, seed) pairs, with variants of the two attacks that can go furthest:

- `inversion:STEPS:LR:SAMPLER_STEPS`: the table's textual inversion (pixel MSE to the original's references through
  a differentiable DDIM sampler of SAMPLER_STEPS steps), with more steps or a larger rate;
- `denoise:STEPS:LR`: textual inversion with UnlearnDiffAtk's denoising objective instead of a sampler: the defended
  model's guided x0 prediction (negative guidance included) at a random training timestep of the references' latents,
  epsilon-weighted MSE;
- `noise:STEPS:LR:SAMPLER_STEPS`: the table's noise attack (CLIP towards the concept, z on the typical shell);
- `hidden:STEPS:LR:SAMPLER_STEPS`: the text encoder's output itself optimised per pair (CLIP towards the concept),
  from the prompt's, with no norm bound: the most an attacker who feeds the UNet its own conditioning can do. The
  table's soft prompt stays in token-embedding space, behind the encoder's final layer norm.
- `hiddenmatch:STEPS:LR:SAMPLER_STEPS`: the same conditioning, optimised towards the original's own image of the pair
  (pixel MSE, the output matching of UMA / P4D) instead of CLIP, so no scorer can be fooled: the target is a circle.

Success is the held-out judge on the full sampler's images, counted as in the table (total = plain or attack, over
the pairs where the original shows the concept). The last column counts the same images as the optimised scorer (the
world's CLIP) sees them: an attack that fools CLIP but not the judge shows there, one that cannot move the image does
not.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sfd.commands.worlds.shapes_judge import judge_spec
from sfd.core.attacks import concept_vote_loss, conditioning_attack, inversion_attack, noise_attack, output_match_loss
from sfd.core.models import checkpoints_dir
from sfd.evaluators.detectors import DetectorFactory
from sfd.evaluators.robustness import (NEGATIVE_GUIDANCE, RobustnessSettings, _chunks, _judge, base_pairs, budget, full_images,
                                       reference_set)
from sfd.evaluators.sampling import load_model
from sfd.evaluators.victim import Victim
from sfd.kernel.sampling import ddim, sigma_ladder, start_latents


def denoise_inversion(victim: Victim, concept: str, ref_prompts, ref_latents, test_prompts, test_z, steps: int, lr: float, seed: int = 0):
    """One token learned with the denoising objective on the references' latents; the test images with that token."""
    surface = victim.surface
    refs = surface.with_placeholder(ref_prompts, concept)
    sched, g = victim.denoiser.schedule, torch.Generator().manual_seed(seed)
    # textual inversion's token (one vector per text encoder), started at the placeholder word's own embedding; Adam's
    # rate in units of each encoder's token-embedding std, as the attack library's
    token = {n: t.requires_grad_(True) for n, t in surface.placeholder_tokens().items()}
    scales = surface.scales()
    opt = torch.optim.Adam([{"params": [t], "lr": lr * scales[n]} for n, t in token.items()])
    with surface.tokens(token):
        for _ in range(steps):
            sigma = sched.sigma_at(torch.randint(0, sched.num_train_timesteps, (len(refs),), generator=g)).float()
            x = ref_latents + sigma.view(-1, 1, 1, 1) * torch.randn(ref_latents.shape, generator=g)
            d = victim.x0(x, sigma, victim.encode(refs))
            loss = (victim.denoiser.loss_weight(sigma).view(-1, 1, 1, 1) * (d - ref_latents) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            return victim.render(victim.encode(surface.with_placeholder(test_prompts, concept)), test_z, full=True)


def final_latents(victim: Victim, prompts, z) -> torch.Tensor:
    """The multi-step model's latents (its last x0 prediction) from its own full DDIM sampler."""
    sigmas = sigma_ladder(victim.denoiser.schedule, victim.model.steps)
    cond = victim.encode(prompts)
    z = z.to(victim.pipe.device)
    _, x0 = ddim(lambda x, s: victim.x0(x, s, cond), start_latents(z, sigmas[0]), sigmas.to(z.device))
    return x0


def write_grid(path: Path, rows, keep) -> None:
    from torchvision.utils import make_grid, save_image

    tiles = torch.cat([r.detach().float().cpu()[keep].clamp(0, 1) for r in rows])
    tiles = F.interpolate(tiles, scale_factor=2, mode="nearest")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(tiles, nrow=len(keep), padding=2, pad_value=1.0), path)
    print(f"  wrote {path}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", default="circle")
    ap.add_argument("--variants", default="inversion:60:0.1:2,denoise:60:0.1,denoise:150:0.3,noise:10:0.1:2,noise:10:0.1:8,noise:30:0.3:2")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-prompts", type=int, default=10)
    ap.add_argument("--grid", metavar="DIR", help="write one PNG per variant: the original's, the plain defended and the attacked "
                    "images of the ideal pairs, one row each")
    a = ap.parse_args()
    concept = a.concept
    teacher = str(checkpoints_dir() / "shapes" / "teacher")
    cfg = RobustnessSettings(concept, n_seeds=a.seeds, max_prompts=a.max_prompts).validate()
    factory = DetectorFactory()
    judge, scorer = factory.build(judge_spec(concept)), factory.build(f"clip:{concept}")
    original = Victim(load_model(teacher, "original"), "original", role="original")
    defended = Victim(load_model(teacher, "negative-prompt"), "negative-prompt", negative_prompt=concept,
                      negative_guidance=NEGATIVE_GUIDANCE, role="control")
    pairs = base_pairs(concept, cfg)
    prompts = [p for p, _ in pairs]
    z = original.noise([s for _, s in pairs])
    original_images = full_images(original, prompts, z, cfg.batch_size)
    ideal = _judge(judge, original_images, prompts)
    plain_images = full_images(defended, prompts, z, cfg.batch_size)
    plain, plain_clip = _judge(judge, plain_images, prompts), _judge(scorer, plain_images, prompts)
    keep = [i for i, ok in enumerate(ideal) if ok]
    print(f"{concept}: {len(keep)} of {len(pairs)} pairs ideal; the defended teacher's plain rate {sum(plain[i] for i in keep)}/{len(keep)} "
          f"(CLIP: {sum(plain_clip[i] for i in keep)}/{len(keep)})", flush=True)
    ref_prompts, ref_z, ref_images = reference_set(original, concept, cfg)
    with torch.no_grad():
        ref_latents = torch.cat([final_latents(original, ref_prompts[s], ref_z[s]) for s in _chunks(len(ref_prompts), cfg.batch_size)])
    print("| variant | total ASR | seconds | CLIP says concept |\n| --- | --- | --- | --- |")
    for variant in a.variants.split(","):
        name, *args = variant.split(":")
        t0 = time.perf_counter()
        if name == "denoise":
            images = denoise_inversion(defended, concept, ref_prompts, ref_latents, prompts, z, int(args[0]), float(args[1]))
        elif name in ("hidden", "hiddenmatch"):
            defended.steps = int(args[2])
            target = original_images.to(z.device)
            loss_fn = concept_vote_loss(scorer) if name == "hidden" else output_match_loss(target)
            c = RobustnessSettings(concept, steps=int(args[0]), lr=float(args[1])).validate()
            images, moved = conditioning_attack(defended, prompts, z, budget(c), loss_fn)
            print(f"  ({variant}: the conditioning moved by {moved:.2f}x its norm)", flush=True)
        elif name in ("inversion", "noise"):
            steps, lr, sampler_steps = int(args[0]), float(args[1]), int(args[2])
            c = RobustnessSettings(concept, steps=steps, inversion_steps=steps, lr=lr, sampler_steps=sampler_steps).validate()
            defended.steps = sampler_steps
            images = (inversion_attack(defended, ref_prompts, ref_z, ref_images, prompts, z, concept, budget(c)) if name == "inversion"
                      else noise_attack(defended, prompts, z, budget(c), concept_vote_loss(scorer)))
        else:
            raise SystemExit(f"unknown variant {variant!r}: expected inversion:STEPS:LR:SAMPLER_STEPS, denoise:STEPS:LR, "
                             "noise:STEPS:LR:SAMPLER_STEPS, hidden:STEPS:LR:SAMPLER_STEPS or hiddenmatch:STEPS:LR:SAMPLER_STEPS")
        seconds = time.perf_counter() - t0
        flags, fooled = _judge(judge, images, prompts), _judge(scorer, images, prompts)
        total = sum(flags[i] or plain[i] for i in keep)
        clip = sum(fooled[i] for i in keep)
        print(f"| {variant} | {total}/{len(keep)} ({total / len(keep):.0%}) | {seconds:.0f} | {clip}/{len(keep)} |", flush=True)
        if a.grid:
            write_grid(Path(a.grid) / f"{concept}_{variant.replace(':', '_')}.png", [original_images, plain_images, images], keep)


if __name__ == "__main__":
    main()
