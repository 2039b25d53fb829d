"""Defaults that fit the machine: micro-batches chosen from the memory available, out-of-memory as one line, --resolution.

The stage-1 presets keep SiD's global batches (512 rows for SD/SDXL, 256 for SD3/FLUX); `sfd distill` and `sfd erase`
choose how many micro-batches that batch is accumulated over (sfd/kernel/memory.py) and say so in one line.
"""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sfd.kernel import memory
from sfd.commands.cli import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "checkpoints" / "digits" / "teacher")
MIB, GIB = 2**20, 2**30


# ------------------------------------------------------------------------------------------- the choice
def test_valid_counts_split_both_retain_and_forget_rows():
    assert memory.valid_counts(512, 0) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    assert memory.valid_counts(24, 8) == [1, 2, 4, 8]
    assert memory.valid_counts(3, 2) == [1]


def test_choice_is_the_smallest_count_whose_micro_batch_fits():
    # 100 MiB fixed + 10 MiB a row within 70% of 1 GiB (716.8 MiB): 512 / m rows <= 61.7, so m = 16 (32 rows), not 8 (64).
    assert memory.choose_micro_batches(10 * MIB, 100 * MIB, GIB, 512, 0, safety=0.7) == 16
    # The default margin, a quarter of what is available (256 MiB): 8 rows (180 MiB), not 16 (260 MiB).
    assert memory.choose_micro_batches(10 * MIB, 100 * MIB, GIB, 512, 0) == 64
    assert memory.choose_micro_batches(10 * MIB, 100 * MIB, 64 * GIB, 512, 0) == 1  # everything fits: one pass
    assert memory.choose_micro_batches(10 * MIB, 2 * GIB, GIB, 512, 0) == 512  # nothing fits: the smallest micro-batch
    # Retain and forget rows are split alike: 24 + 8 rows, 8 MiB a row within 0.7 x 200 MiB = 140 MiB: 128 MiB (16 rows).
    assert memory.choose_micro_batches(8 * MIB, 0, 200 * MIB, 24, 8, safety=0.7) == 2
    # A smaller fraction of the memory never picks fewer micro-batches: 0.3 x 200 MiB = 60 MiB holds 4 rows (3 + 1).
    assert memory.choose_micro_batches(8 * MIB, 0, 200 * MIB, 24, 8, safety=0.3) == 8


def test_trial_micro_batch_has_a_few_rows_when_the_batch_allows():
    assert memory.trial_count(512, 0) == 128  # 4 rows
    assert memory.trial_count(24, 8) == 8  # 3 + 1 rows: the smallest equal part
    assert memory.trial_count(2, 1) == 1


def test_config_rejects_a_count_that_does_not_divide_the_batches():
    from sfd.core.config import SFDConfig
    from sfd.kernel.errors import SFDError

    with pytest.raises(SFDError, match=r"batch_forget=6 is not divisible by --micro-batches 4; .*\(1, 2\)"):
        SFDConfig(batch_retain=8, batch_forget=6, micro_batches=4).validate()
    SFDConfig(batch_retain=8, batch_forget=6, micro_batches=2).validate()
    SFDConfig(batch_retain=8, batch_forget=6).validate()  # 0: chosen from memory


def test_out_of_memory_errors_are_recognised():
    assert memory.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert memory.is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert memory.is_out_of_memory(MemoryError())
    assert not memory.is_out_of_memory(RuntimeError("shape mismatch"))


def test_peak_meter_sees_a_transient_allocation():
    meter = memory.PeakMeter(torch.device("cpu"))
    with meter.measure():
        x = torch.ones(64 * MIB // 4)  # 64 MiB, touched
        del x
    assert 48 * MIB < meter.peak < 512 * MIB, meter.peak


# ------------------------------------------------------------------------------------------ the commands
def _choice_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("micro-batches: ")]


def test_explicit_count_is_kept_and_said(tmp_path, capsys):
    out = tmp_path / "erased"
    assert main(["erase", "--model", DIGITS, "--forget", "1", "--single-stage", "--steps", "1", "--micro-batches", "4",
                 "--out", str(out), "--quiet"]) == 0
    lines = _choice_lines(capsys.readouterr().out)
    assert lines == ["micro-batches: 4 (8 of this process's 32 rows each; set by --micro-batches)"], lines
    assert json.loads((out / "sfd_config.json").read_text())["micro_batches"] == 4


def test_out_of_memory_in_a_step_is_one_line_naming_micro_batches_and_keeps_the_state(tmp_path, capsys, monkeypatch):
    from sfd.core.trainer import SFDTrainer

    real = SFDTrainer.generator_step

    def step(self):
        if self.step_count == 1:  # the second iteration: the first one's state is on disk
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self)

    monkeypatch.setattr(SFDTrainer, "generator_step", step)
    out = tmp_path / "erased"
    rc = main(["erase", "--model", DIGITS, "--forget", "1", "--single-stage", "--steps", "3", "--checkpoint-every", "1",
               "--micro-batches", "2", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "out of memory at step 2 with --micro-batches 2" in err and "pass a larger --micro-batches (4, 8" in err, err
    assert f"last good state: {out / 'training_state.safetensors'}" in err, err
    assert (out / "training_state.safetensors").is_file()
    from sfd.core.trainer import read_state

    assert read_state(out / "training_state.safetensors")[1]["step"] == 1


def test_resume_may_change_micro_batches(tmp_path, capsys, monkeypatch):
    """The count splits the same batch differently (the same maths): a resume may change it, as --steps."""
    from sfd.core.trainer import SFDTrainer

    real = SFDTrainer.step

    def stop_after_one(self):  # a run stopped after its first iteration, as by Ctrl-C
        losses = real(self)
        self.stop_requested = True
        return losses

    args = ["erase", "--model", DIGITS, "--forget", "1", "--single-stage", "--steps", "2", "--out", str(tmp_path / "e"), "--quiet"]
    monkeypatch.setattr(SFDTrainer, "step", stop_after_one)
    assert main(args + ["--micro-batches", "2"]) == 130
    monkeypatch.undo()
    assert main(args + ["--micro-batches", "4", "--resume"]) == 0, capsys.readouterr().err
    assert "resuming" in capsys.readouterr().out


def _sfd(args: list[str], timeout: int = 600) -> tuple[int, str, str, float]:
    """`python -m sfd ARGS` in a child process: (exit status, stdout, stderr, its peak resident memory in GiB)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.Popen([sys.executable, "-m", "sfd", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=timeout)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB  # an upper bound: the largest child so far
    return proc.returncode, out, err, peak


def test_tiny_sdxl_distill_with_the_defaults_chooses_micro_batches_and_fits(tiny_sdxl_dir, tmp_path):
    """The SD stage-1 preset's 512 rows at the tiny SDXL's own size (8x8 latents): unsplit it was killed at 18.6 GB."""
    rc, out, err, peak = _sfd(["distill", "--model", str(tiny_sdxl_dir), "--steps", "1", "--out", str(tmp_path / "base"), "--quiet"])
    assert rc == 0, err[-2000:]
    lines = _choice_lines(out)
    assert len(lines) == 1 and "of this process's 512 rows each; chosen for the" in lines[0], out
    summary = json.loads((tmp_path / "base" / "sfd_config.json").read_text())
    assert summary["config"]["batch_retain"] == 512 and summary["micro_batches"] == int(lines[0].split()[1])
    assert peak < 8, peak


def test_resolution_sets_the_trained_latent_size_and_the_folder_samples_at_it(tiny_sdxl_dir, tmp_path):
    from sfd.core.families import family_for

    out = tmp_path / "base"
    rc, stdout, err, _ = _sfd(["distill", "--model", str(tiny_sdxl_dir), "--steps", "1", "--resolution", "8",
                               "--micro-batches", "64", "--out", str(out), "--quiet"])
    assert rc == 0, err[-2000:]
    summary = json.loads((out / "sfd_config.json").read_text())
    assert summary["resolution"] == 8 and summary["latent_shape"] == [4, 4, 4]  # the VAE's factor is 2; its own size is 16 px
    family = family_for(str(out))
    pipe = family.load(str(out))
    assert family.image_size(pipe) == 8
    images = family.sample(pipe, ["a photo of a dog"], [torch.Generator().manual_seed(0)])
    assert images.shape[-2:] == (8, 8)
    rc, _, err, _ = _sfd(["distill", "--model", str(tiny_sdxl_dir), "--steps", "1", "--resolution", "33", "--out", str(tmp_path / "x")])
    assert rc == 2 and err.strip().count("\n") == 0 and "--resolution 33 must be a multiple of 2" in err, err


def test_tiny_flux_distill_with_the_defaults_at_a_small_resolution(tmp_path):
    """The FLUX stage-1 preset's 256 rows; --resolution 64 (32x32 latents, 256 packed tokens) instead of the pipeline's
    default 128x128 latents keeps the test short (the default size: BENCHMARKS.md). The folder records the size."""
    from conftest import build_tiny_flux

    model = tmp_path / "tiny-flux"
    build_tiny_flux().save_pretrained(model, safe_serialization=True)
    out = tmp_path / "base"
    rc, stdout, err, peak = _sfd(["distill", "--model", str(model), "--steps", "1", "--resolution", "64", "--out", str(out), "--quiet"])
    assert rc == 0, err[-2000:]
    lines = _choice_lines(stdout)
    assert len(lines) == 1 and "of this process's 256 rows each; chosen for the" in lines[0], stdout
    assert json.loads((out / "model_index.json").read_text())["sample_size"] == 32
    assert json.loads((out / "sfd_config.json").read_text())["latent_shape"] == [4, 32, 32]
    assert peak < 8, peak
