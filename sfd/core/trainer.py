"""The SFD training loop: alternating fake-score and generator updates (DESIGN.md section 2).

The loop owns the optimizers, the retain/forget weighting, gradient clipping, the generator EMA, the
random state and the training state on disk; the losses in `sfd.core.losses` are pure per-sample functions.

Several processes (``accelerate launch`` / ``torchrun``, DDP) split each *global* batch: every process
draws the same global batch from the same seeded generator and keeps its own rows, so N processes
compute the same update as one process with the whole batch (up to the order of float reductions).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from sfd.core.concepts import ConditionBatch
from sfd.core.config import SFDConfig
from sfd.kernel.ema import EMA
from sfd.kernel.errors import DivergenceError, Interrupted, SFDError
from sfd.kernel.generators import OneStepConvention
from sfd.core.losses import Cond, fake_score_loss, generate, generator_loss
from sfd.kernel.memory import (GIB, Choice, OutOfMemory, PeakMeter, available_bytes, choose_micro_batches, is_out_of_memory,
                     out_of_memory_message, return_freed_memory, trial_count, valid_counts)
from sfd.core.roles import FullRoles
from sfd.kernel.tree import tree_map

STATE_FORMAT = "sfd-training-state-1"


def _split_weighted(per_sample: torch.Tensor, batch: ConditionBatch, w_retain: float, w_forget: float) -> tuple[torch.Tensor, dict]:
    """The one place where retain and forget terms are named and weighted (no forget rows: plain SiD, stage 1)."""
    retain, forget = per_sample.split([batch.n_retain, batch.n_forget])
    if batch.n_forget == 0:
        return w_retain * retain.mean(), {"retain": retain.mean().item()}
    total = w_retain * retain.mean() + w_forget * forget.mean()
    return total, {"retain": retain.mean().item(), "forget": forget.mean().item()}


def _check_finite(loss: torch.Tensor, name: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise DivergenceError(f"{name} loss became {loss.item()} at step {step + 1}; lower the learning rates")


def _rows(x: torch.Tensor | dict | None, idx: torch.Tensor):
    return None if x is None else tree_map(lambda v: v[idx.to(v.device)], x)


class SFDTrainer:
    """Distils the teacher into a one-step generator while aligning its forget-concept score with the override's.

    With no forget rows (`config.batch_forget = 0`, a spec without forget concepts) this is plain SiD: the
    stage-1 distillation of `sfd distill`.
    """

    def __init__(
        self,
        roles,
        spec,
        config: SFDConfig,
        device: str | torch.device = "cpu",
        frozen_dtype: torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        autocast_dtype: torch.dtype | None = None,
        latent_shape: tuple[int, ...] | None = None,
        adversary=None,
    ):
        """`roles`: the teacher, fake score and generator (`sfd.core.roles`); a plain teacher `Denoiser` means full copies
        of it with SiD's generator at `config.t_init`. `spec.sample(n_retain, n_forget, rng, device,
        for_fake_training)` yields the condition batches. `adversary`: robust SFD's adversarial forget rows
        (`sfd.core.robust.AdversarialForget`, built beside the roles; None: plain SFD, untouched).

        Memory options for Stable-Diffusion-sized UNets, used when the roles are built here: `frozen_dtype`
        (bf16/fp16) for the teacher only, after the trainable copies are taken in fp32; `gradient_checkpointing`
        for generator and fake score. `autocast_dtype` (bf16) for all forward passes.
        """
        if config.guidance_teacher is None:
            raise ValueError("config.guidance_teacher must be resolved (SFDConfig.resolved) before training")
        self.config = config
        self.spec = spec
        self.device = torch.device(device)
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world_size > 1 else 0
        for name in ("batch_retain", "batch_forget"):
            if getattr(config, name) % (self.world_size * max(config.micro_batches, 1)):
                raise SFDError(f"{name}={getattr(config, name)} is not divisible by the {self.world_size} processes x "
                               f"{max(config.micro_batches, 1)} micro-batches")
        # config.micro_batches 0: chosen from the memory available on the first iteration (resolve_micro_batches).
        self.micro_batches: int | None = config.micro_batches or None
        self.micro_choice: Choice | None = None
        if not hasattr(roles, "generator_parameters"):  # a teacher denoiser: full copies of it
            roles = FullRoles(roles, OneStepConvention(config.t_init), self.device, frozen_dtype=frozen_dtype,
                              gradient_checkpointing=gradient_checkpointing)
        self.roles = roles
        self.teacher, self.fake, self.generator = roles.teacher, roles.fake, roles.generator
        self.autocast_dtype = autocast_dtype
        self.adversary = adversary
        # Trained through these views (DDP wrappers, or the plain roles with a manual all-reduce); evaluated plain.
        self.generator_train, self.fake_train, self.sync_gradients = roles.train_views(self.world_size, self.device)
        self.sigma_init = self.generator.sigma_init
        betas = (0.0, 0.999)
        self.opt_gen = torch.optim.Adam(roles.generator_parameters(), lr=config.lr_generator, betas=betas)
        self.opt_fake = torch.optim.Adam(roles.fake_parameters(), lr=config.lr_fake, betas=betas)
        self.ema = EMA(roles.generator_state(), config.ema_decay)
        self.rng = torch.Generator().manual_seed(config.seed)
        self.step_count = 0
        self.stop_requested = False
        self.latent_shape = tuple(latent_shape or self.teacher.sample_shape())
        # What the spec leaves to the run (a class model's override "random") is settled once, by the spec itself.
        self.spec = spec.settle(self.generator, self.teacher, self.sigma_init, self.latent_shape, self.device, config.seed,
                                self._autocast)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------------------------------- batches
    def _global_batch(self, for_fake_training: bool):
        """Conditions, latents z, sigmas and noise of one global batch, then this process's rows of it."""
        c = self.config
        batch = self.spec.sample(c.batch_retain, c.batch_forget, self.rng, self.device, for_fake_training=for_fake_training)
        n = c.batch_retain + c.batch_forget
        z = torch.randn((n, *self.latent_shape), generator=self.rng)
        t = torch.randint(c.t_min, c.t_max, (n,), generator=self.rng)
        noise = torch.randn((n, *self.latent_shape), generator=self.rng)
        if self.adversary is not None:  # robust SFD: this iteration's adversarial forget rows, before the split
            batch, z = self.adversary.rows(batch, z, self.step_count)
        sigma = self.teacher.schedule.sigma_at(t)
        if self.world_size > 1:
            r, f = c.batch_retain // self.world_size, c.batch_forget // self.world_size
            idx = torch.cat([torch.arange(self.rank * r, (self.rank + 1) * r),
                             c.batch_retain + torch.arange(self.rank * f, (self.rank + 1) * f)])
            pick = lambda cond: Cond(_rows(cond.cond, idx), _rows(cond.uncond, idx))  # noqa: E731
            batch = ConditionBatch(pick(batch.fake), pick(batch.teacher), r, f)
            z, sigma, noise = z[idx], sigma[idx], noise[idx]
        return batch, z.to(self.device), sigma.to(self.device), noise.to(self.device)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _clip_and_step(self, params, optimizer: torch.optim.Optimizer, clip: float) -> None:
        if self.sync_gradients:  # roles that are not DDP-wrapped (adapters): average the gradients over processes
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(self.world_size)
        if clip > 0:
            torch.nn.utils.clip_grad_value_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------------------------------ steps
    def _micro_batches(self, batch: ConditionBatch, z, sigma, noise, m: int):
        """This process's rows in `m` equal parts, each with its share of retain and forget rows, so that the mean of the
        parts' losses is the whole batch's (gradient accumulation for batches that do not fit)."""
        if m == 1:
            yield batch, z, sigma, noise
            return
        r, f = batch.n_retain // m, batch.n_forget // m
        for i in range(m):
            idx = torch.cat([torch.arange(i * r, (i + 1) * r), batch.n_retain + torch.arange(i * f, (i + 1) * f)])
            pick = lambda cond: Cond(_rows(cond.cond, idx), _rows(cond.uncond, idx))  # noqa: E731
            d = idx.to(z.device)
            yield ConditionBatch(pick(batch.fake), pick(batch.teacher), r, f), z[d], sigma[d], noise[d]

    def _fake_micro(self, batch: ConditionBatch, z, sigma, noise, m: int) -> dict:
        """One micro-batch of the fake-score step: its loss (1/m of the batch's) backpropagated; its loss parts."""
        c = self.config
        with torch.no_grad(), self._autocast():
            x_g = generate(self.generator, z, batch.fake).float()
        with self._autocast():
            per_sample = fake_score_loss(self.fake_train, x_g, sigma, noise, batch.fake, c.guidance_fake_train)
        loss, parts = _split_weighted(per_sample, batch, c.lambda_fake_retain, c.lambda_fake_forget)
        _check_finite(loss, "fake-score", self.step_count)
        (loss / m).backward()
        return parts

    def _generator_micro(self, batch: ConditionBatch, z, sigma, noise, m: int) -> dict:
        """One micro-batch of the generator step (SiD's loss with SFD's forget rows), backpropagated."""
        c = self.config
        with self._autocast():
            x_g = generate(self.generator_train, z, batch.fake)
            per_sample = generator_loss(
                self.teacher, self.fake, x_g, sigma, noise,
                teacher_cond=batch.teacher, fake_cond=batch.fake, alpha=c.alpha,
                teacher_guidance=c.guidance_teacher, fake_guidance=c.guidance_fake_eval,
            )
        loss, parts = _split_weighted(per_sample, batch, c.lambda_gen_retain, c.lambda_gen_forget)
        _check_finite(loss, "generator", self.step_count)
        (loss / m).backward()
        return parts

    def fake_step(self) -> dict:
        """Fit the fake score to the generator's current samples (x_g detached)."""
        c = self.config
        parts_sum: dict = {}
        self.roles.set_trainable(generator=False, fake=True)
        m = self.resolve_micro_batches().count  # chosen once, on the first step
        for micro in self._micro_batches(*self._global_batch(for_fake_training=True), m):
            parts = self._fake_micro(*micro, m)
            parts_sum = {k: parts_sum.get(k, 0.0) + v / m for k, v in parts.items()}
        self._clip_and_step(self.roles.fake_parameters(), self.opt_fake, c.grad_clip)
        return {"fake_" + k: v for k, v in parts_sum.items()}

    def generator_step(self) -> dict:
        """SiD update of the generator; the forget samples are pulled towards the teacher's override score."""
        c = self.config
        parts_sum: dict = {}
        self.roles.set_trainable(generator=True, fake=False)  # fake score frozen, but gradients flow through its input
        m = self.resolve_micro_batches().count  # chosen once, on the first step
        for micro in self._micro_batches(*self._global_batch(for_fake_training=False), m):
            parts = self._generator_micro(*micro, m)
            parts_sum = {k: parts_sum.get(k, 0.0) + v / m for k, v in parts.items()}
        self._clip_and_step(self.roles.generator_parameters(), self.opt_gen, c.grad_clip)
        self.ema.update(self.roles.generator_state())
        return {"gen_" + k: v for k, v in parts_sum.items()}

    # ---------------------------------------------------------------------------------- micro-batches
    def resolve_micro_batches(self) -> Choice:
        """The run's micro-batch count, once: `config.micro_batches` if set, else the smallest count whose micro-batch
        fits the memory available, measured on a trial micro-batch (`sfd.kernel.memory`). All processes take the largest
        count any of them needs, so that their gradient all-reduces pair up."""
        if self.micro_choice is not None:
            return self.micro_choice
        c = self.config
        r, f = c.batch_retain // self.world_size, c.batch_forget // self.world_size
        if c.micro_batches:
            choice = Choice(c.micro_batches, r + f, "set by --micro-batches")
        elif len(valid_counts(r, f)) == 1:
            choice = Choice(1, r + f, f"{r} retain and {f} forget rows split into no smaller equal parts")
        else:
            choice = self._measured_choice(r, f)
        if self.world_size > 1 and not c.micro_batches:
            agreed = torch.tensor([choice.count], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            if int(agreed) != choice.count:
                choice = Choice(int(agreed), r + f, choice.reason + "; another process needed more")
        self.micro_choice, self.micro_batches = choice, choice.count
        return choice

    def _measured_choice(self, r: int, f: int) -> Choice:
        """Run one trial micro-batch of each step, measure the memory it adds, and choose (`choose_micro_batches`).

        The trial's gradients are dropped and the batch generator's state restored, so the run that follows is the
        one it would have been with the chosen count given up front."""
        m_t = trial_count(r, f)
        rows = (r + f) // m_t
        available = available_bytes(self.device)
        nbytes = lambda ps: sum(p.numel() * p.element_size() for p in ps)  # noqa: E731
        gen_b, fake_b = nbytes(self.roles.generator_parameters()), nbytes(self.roles.fake_parameters())
        state = self.rng.get_state()
        peaks = []
        try:
            # The generator's step first: it is the larger, and memory the first trial frees may be reused by the second.
            for micro, params, trainable, for_fake in ((self._generator_micro, self.roles.generator_parameters, (True, False), False),
                                                       (self._fake_micro, self.roles.fake_parameters, (False, True), True)):
                self.roles.set_trainable(*trainable)
                part = next(iter(self._micro_batches(*self._global_batch(for_fake_training=for_fake), m_t)))
                with PeakMeter(self.device).measure() as meter:
                    with contextlib.suppress(DivergenceError):  # the step itself reports it, naming its loss
                        micro(*part, m_t)
                for p in params():
                    p.grad = None
                del part
                peaks.append(meter.peak)
        finally:
            self.rng.set_state(state)
        # Each trial's peak holds its gradients (allocated once, whatever the micro-batch's size) and its activations
        # (per row). Still to come: Adam's two moments (at the first update) and its temporaries.
        per_row = max(max(peaks[0] - gen_b, peaks[1] - fake_b), 0) / rows
        adam_pending = 0 if self.opt_gen.state or self.opt_fake.state else 2 * (gen_b + fake_b)
        fixed = 2 * max(gen_b, fake_b) + adam_pending
        count = choose_micro_batches(per_row, fixed, available, r, f)
        return Choice(count, r + f, f"chosen for the {available / GIB:.1f} GiB available: a trial micro-batch of {rows} rows "
                                    f"added {max(peaks) / GIB:.2f} GiB; --micro-batches N sets it")

    def _set_learning_rates(self) -> None:
        """Cosine decay from the configured rates to lr_final of them over config.steps (constant if lr_final = 1)."""
        c = self.config
        progress = min(self.step_count / max(c.steps - 1, 1), 1.0)
        scale = c.lr_final + (1 - c.lr_final) * 0.5 * (1 + math.cos(math.pi * progress))
        if c.lora:
            scale *= c.lora_lr_scale
        for opt, lr in ((self.opt_gen, c.lr_generator), (self.opt_fake, c.lr_fake)):
            for group in opt.param_groups:
                group["lr"] = lr * scale

    def step(self) -> dict:
        """One SFD iteration; running out of memory is one line naming --micro-batches (`OutOfMemory`)."""
        self._set_learning_rates()
        try:
            if self.adversary is not None:
                self.adversary.refresh(self)
            losses = {**self.fake_step(), **self.generator_step()}
        except Exception as e:  # noqa: BLE001 - only out-of-memory errors are translated, the rest re-raised
            if not is_out_of_memory(e):
                raise
            c = self.config
            count = self.micro_batches or max(c.micro_batches, 1)
            message = out_of_memory_message(self.step_count, count, c.batch_retain // self.world_size, c.batch_forget // self.world_size)
        else:
            self.step_count += 1
            return losses
        raise OutOfMemory(message)  # outside the except block: the failed step's tensors are freed first

    @contextlib.contextmanager
    def _stop_on_sigint(self):
        """First Ctrl-C: finish the current iteration, then stop cleanly; a second one aborts at once."""
        if self.world_size > 1 or not hasattr(signal, "SIGINT"):
            yield
            return
        try:
            previous = signal.getsignal(signal.SIGINT)
        except ValueError:  # not the main thread
            yield
            return

        def handler(signum, frame):
            self.stop_requested = True
            signal.signal(signal.SIGINT, previous)

        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def train(self, steps: int | None = None, progress: bool = True, callback=None, checkpoint=None, desc: str = "sfd") -> dict:
        """Run until `steps` (default: config.steps) total steps; returns the last losses and the wall time.

        `callback(trainer)` runs after every iteration (periodic checkpoints live there); `checkpoint(trainer)`
        runs once when a Ctrl-C stops the run at an iteration boundary, before `Interrupted` is raised.
        """
        total = self.config.steps if steps is None else steps
        t0 = time.perf_counter()
        losses: dict = {}
        bar = tqdm(total=total, initial=self.step_count, desc=desc, unit="it", disable=not (progress and self.is_main))
        with self._stop_on_sigint():
            while self.step_count < total:
                losses = self.step()
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
                if callback is not None:
                    callback(self)
                if self.stop_requested:
                    bar.close()
                    if checkpoint is not None:
                        checkpoint(self)
                    raise Interrupted(f"interrupted at step {self.step_count} of {total}")
        bar.close()
        return {"losses": losses, "seconds": time.perf_counter() - t0}

    def ema_unet(self) -> torch.nn.Module:
        """A standalone generator network holding the EMA weights."""
        return self.roles.export_generator(self.ema.shadow)

    def release_training_memory(self) -> None:
        """Once training is over: drop what only training needs (both optimizers' moments, gradients), so that saving
        does not add a network's copy on top of them."""
        if self.adversary is not None:  # its hooks (class-embedding space) come off the networks
            self.adversary.close()
        for opt, params in ((self.opt_gen, self.roles.generator_parameters()), (self.opt_fake, self.roles.fake_parameters())):
            opt.state.clear()
            for p in params:
                p.grad = None
        return_freed_memory(self.device)

    def final_generator(self) -> torch.nn.Module:
        """Once training is over: the generator network with the EMA weights, made from the roles' own network (no
        copy; the roles cannot train after this). `ema_unet` is the copy for use during training."""
        self.release_training_memory()
        self.fake = self.fake_train = None  # the fake score's network may go (full mode: a whole network)
        self.opt_fake = self.opt_gen = None  # their parameter lists would keep it alive
        net = self.roles.finish_generator(self.ema.shadow)
        return_freed_memory(self.device)
        return net

    # ---------------------------------------------------------------------------------- training state
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON metadata) that resume this run exactly: weights, EMA, optimizers, RNG, step."""
        tensors: dict[str, torch.Tensor] = {}
        for prefix, state in (("generator", self.roles.generator_state()), ("fake", self.roles.fake_state())):
            tensors.update({f"{prefix}.{k}": v for k, v in state.items()})
        tensors.update({f"ema.{k}": v for k, v in self.ema.shadow.items()})
        groups = {}
        for name, opt in (("opt_gen", self.opt_gen), ("opt_fake", self.opt_fake)):
            sd = opt.state_dict()
            groups[name] = sd["param_groups"]
            for idx, st in sd["state"].items():
                for key, value in st.items():
                    tensors[f"{name}.{idx}.{key}"] = torch.as_tensor(value)
        tensors["rng"] = self.rng.get_state()
        if self.adversary is not None:  # the kept perturbations and their random stream: a resume continues them
            tensors.update({f"adversary.{k}": v for k, v in self.adversary.state().items()})
        meta = {
            "format": STATE_FORMAT,
            "step": self.step_count,
            "config": json.loads(self.config.to_json()),
            "ema_num_updates": self.ema.num_updates,
            "param_groups": groups,
        }
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        if meta.get("format") != STATE_FORMAT:
            raise SFDError(f"training state has format {meta.get('format')!r}, expected {STATE_FORMAT!r}")

        def sub(prefix: str) -> dict:
            return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

        self.roles.load_generator_state(sub("generator"))
        self.roles.load_fake_state(sub("fake"))
        self.ema.load_state_dict({"decay": self.config.ema_decay, "num_updates": meta["ema_num_updates"], "shadow": sub("ema")})
        for name, opt in (("opt_gen", self.opt_gen), ("opt_fake", self.opt_fake)):
            state: dict = {}
            for k, v in sub(name).items():
                idx, key = k.split(".", 1)
                state.setdefault(int(idx), {})[key] = v.to(self.device) if key != "step" else v
            opt.load_state_dict({"state": state, "param_groups": meta["param_groups"][name]})
        self.rng.set_state(tensors["rng"])
        if self.adversary is not None:
            self.adversary.load_state(sub("adversary"))
        self.step_count = int(meta["step"])


def save_state_atomic(trainer: SFDTrainer, path: str | os.PathLike, extra_meta: dict | None = None) -> None:
    """Write the training state to `path` via a temporary file, fsync and rename: a kill never leaves half a file."""
    from safetensors.torch import save_file

    tensors, meta = trainer.state()
    meta.update(extra_meta or {})
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata={"sfd": json.dumps(meta)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("sfd", "{}"))
        return load_file(os.fspath(path)), meta
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise SFDError(f"training state {os.fspath(path)} is unreadable ({e.__class__.__name__}); start again with --overwrite") from None
