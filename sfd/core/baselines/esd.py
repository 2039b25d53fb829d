"""Erased Stable Diffusion (ESD; Gandikota, Materzynska, Fiotto-Kaufman & Bau, ICCV 2023), on the family interface.

A copy of the teacher's network is fine-tuned so that, conditioned on the concept, it predicts the frozen
teacher's *negatively guided* score:

    eps_theta(x_t, c, t)  ->  eps*(x_t, "", t) - eta * (eps*(x_t, c, t) - eps*(x_t, "", t))

ESD-x trains the cross-attention layers only (attn2: keys, values, queries, output), the paper's choice for
concepts named in the prompt (styles, objects); ESD-u trains the other layers but the timestep embedding and the
output layers (the unconditional ones, the official `noxattn`), its choice for global concepts such as nudity. x_t
comes, as in the paper, from the model being trained: its own guided sampler run from noise for a random number of
steps with the concept prompt.

In sigma space (`sfd.kernel.denoisers`) the same loss reads ||D_theta(x, c) - D_target||^2 weighted by the teacher's
`loss_weight` (1 / sigma^2 for epsilon models, i.e. the epsilon MSE), with
D_target = D*(x, "") - eta (D*(x, c) - D*(x, "")), so it holds for any family's denoiser.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from sfd.kernel.denoisers import guided
from sfd.kernel.errors import SFDError
from sfd.kernel.sampling import ddim
from sfd.kernel.tree import tree_cat, tree_leaves, tree_map

# The paper's settings (ESD repository train-scripts, SD 1.4): 1,000 iterations, Adam at 1e-5, batch 1,
# negative guidance 1, x_t from 50 DDIM steps at guidance 3. Worlds scale the lr and iterations (sfd/core/config.py).
PAPER = {"steps": 1000, "lr": 1e-5, "batch_size": 1, "negative_guidance": 1.0, "sampler_steps": 50, "start_guidance": 3.0,
         "prompts": "concept", "lr_schedule": "constant"}


@dataclass(frozen=True)
class ESDConfig:
    steps: int = 1000
    lr: float = 1e-5
    batch_size: int = 1
    negative_guidance: float = 1.0  # eta
    sampler_steps: int = 50  # the sampler x_t is drawn from
    start_guidance: float = 3.0
    seed: int = 0
    # What ESD conditions on: "concept", the concept text alone, as the ESD scripts train (`--prompt 'Van Gogh'`;
    # the shapes preset's choice), or "captions", the prompts naming the concept that SFD's erase uses (a world's
    # captions: "a red circle", ...; the first recorded shapes rows used these, and they push the shape away too).
    prompts: str = "concept"
    # The learning rate over the run: "constant", as the ESD scripts, or "cosine", annealed from `lr` towards 0
    # (torch's CosineAnnealingLR over `steps`), so the last updates are small steps rather than the peak rate's.
    lr_schedule: str = "constant"

    def validate(self) -> "ESDConfig":
        for name, v in (("steps", self.steps), ("batch_size", self.batch_size), ("sampler_steps", self.sampler_steps)):
            if v < 1:
                raise SFDError(f"ESD {name} must be >= 1, got {v}")
        if not self.lr > 0:
            raise SFDError(f"ESD learning rate must be > 0, got {self.lr}")
        if self.prompts not in ("concept", "captions"):
            raise SFDError(f"ESD prompts must be 'concept' or 'captions', got {self.prompts!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise SFDError(f"ESD lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        return self

    def describe(self) -> dict:
        return {**asdict(self), "paper": PAPER}


# ESD-u leaves these out as well as cross-attention: the official scripts' `noxattn` skips names starting with
# `out.` and containing `time_embed` (CompVis names), i.e. the timestep embedding and the output norm and conv, which
# every prompt and timestep goes through. These are their diffusers names.
ESD_U_SKIPPED = ("time_embedding.", "conv_norm_out.", "conv_out.")


def esd_parameters(network: torch.nn.Module, which: str) -> list[torch.nn.Parameter]:
    """ESD-x: cross-attention (attn2) parameters; ESD-u: all the others but the timestep embedding and the output
    layers (ESD_U_SKIPPED), as the official `noxattn`."""
    if which not in ("x", "u"):
        raise ValueError(which)
    if which == "x":
        chosen = [p for n, p in network.named_parameters() if "attn2" in n]
    else:
        chosen = [p for n, p in network.named_parameters() if "attn2" not in n and not n.startswith(ESD_U_SKIPPED)]
    if not chosen:
        raise SFDError(f"ESD-{which} found no {'cross-attention (attn2)' if which == 'x' else 'non-cross-attention'} "
                       "layers in this network; ESD applies to UNets with cross-attention")
    return chosen


def _batch(cond: dict, idx: torch.Tensor) -> dict:
    return tree_map(lambda t: t[idx], cond)


def _repeat(cond: dict, n: int) -> dict:
    return tree_map(lambda t: t.expand(n, *t.shape[1:]) if t.shape[0] == 1 else t, cond)


def train_esd(denoiser, forget_cond: dict, empty_cond: dict, latent_shape: tuple[int, ...], which: str, cfg: ESDConfig,
              device: str = "cpu", progress: bool = True) -> dict:
    """Fine-tune `denoiser.unet` in place; `forget_cond` holds one conditioning row per forget prompt, `empty_cond` one
    for "". Returns the loss record."""
    cfg.validate()
    network = denoiser.unet
    frozen = denoiser.with_network(copy.deepcopy(network).requires_grad_(False).eval())
    network.requires_grad_(False)
    params = esd_parameters(network, which)
    for p in params:
        p.requires_grad_(True)
    network.train()
    opt = torch.optim.Adam(params, lr=cfg.lr)
    decay = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps) if cfg.lr_schedule == "cosine"
             else None)
    schedule = denoiser.schedule
    n_train = schedule.num_train_timesteps
    ts = torch.linspace(n_train - 1, 0, cfg.sampler_steps).round().long()
    sigmas = torch.cat([schedule.sigma_at(ts), torch.zeros(1)]).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_prompts = tree_leaves(forget_cond)[0].shape[0]
    losses = []
    bar = tqdm(range(cfg.steps), desc=f"esd-{which}", disable=not progress)
    for _ in bar:
        idx = torch.randint(n_prompts, (cfg.batch_size,), generator=gen)
        cond = tree_map(lambda t: t.to(device), _batch(forget_cond, idx))
        empty = tree_map(lambda t: t.to(device), _repeat(empty_cond, cfg.batch_size))
        k = int(torch.randint(cfg.sampler_steps, (1,), generator=gen))
        x = torch.randn((cfg.batch_size, *latent_shape), generator=gen).to(device) * sigmas[0]
        with torch.no_grad():  # x_t from the model being trained, guided towards the concept: k steps of the shared DDIM
            x, _ = ddim(lambda x, s: guided(denoiser, x, s, cond, empty, cfg.start_guidance), x, sigmas[: k + 1])
            sigma = sigmas[k].expand(cfg.batch_size)
            d_u, d_c = frozen(torch.cat([x, x]), torch.cat([sigma, sigma]), tree_cat([empty, cond])).chunk(2)
            target = d_u - cfg.negative_guidance * (d_c - d_u)
        pred = denoiser(x, sigma, cond)
        w = denoiser.loss_weight(sigma).view(-1, *([1] * (x.ndim - 1)))
        loss = (w * (pred - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if decay is not None:
            decay.step()
        losses.append(loss.item())
        if progress:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4g}")
    network.requires_grad_(False).eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"trained_parameters": sum(p.numel() for p in params), "final_loss": sum(tail) / len(tail), "first_loss": losses[0]}

