"""Every family is attacked (sfd.core.attacks, through the family's attack hook): on tiny random SD, SDXL, SD3 and FLUX
pipelines, one-step and multi-step, each attack runs and raises the concept score (the bundled CLIP's vote for "red")
with a small budget; soft tokens reach every text encoder; `sfd audit --robustness` writes its table for each family."""

import json

import pytest
import torch

from conftest import build_tiny_flux, build_tiny_sd, build_tiny_sd3, build_tiny_sdxl
from sfd.core.attacks import (AttackBudget, TextSurface, concept_vote_loss, conditioning_attack, inversion_attack, noise_attack,
                              soft_prompt_attack)
from sfd.core.families import family_of_pipeline
from sfd.evaluators.sampling import LoadedModel
from sfd.evaluators.victim import Victim

BUILDERS = {"sd": build_tiny_sd, "sdxl": build_tiny_sdxl, "sd3": build_tiny_sd3, "flux": build_tiny_flux}
PROMPTS = ["a blue circle", "a green square"]
BUDGET = AttackBudget(steps=6, lr=0.3, soft_tokens=2, inversion_steps=6, batch_size=4, seed=0)


def _teacher(name: str):
    pipe = build_tiny_sd() if name == "sd" else BUILDERS[name]()
    pipe.set_progress_bar_config(disable=True)
    if name == "flux":
        pipe.default_sample_size = 8  # 8x8 latents (the pipeline's default is 128x128)
    return pipe


def _loaded(pipe, label: str, steps: int | None = None) -> LoadedModel:
    family = family_of_pipeline(type(pipe).__name__)
    one_step = family.is_one_step(pipe)
    return LoadedModel(label, label, family.condition_kind, type(pipe).__name__, pipe, one_step, None if one_step else steps,
                       None if one_step else 3.0, family.image_size(pipe), family=family)


def _one_step(teacher):
    """A never-erased one-step generator: the teacher's network called by its family's one-step convention."""
    family = family_of_pipeline(type(teacher).__name__)
    return family.one_step_pipeline_from(teacher, family.network(teacher), family.default_convention(999 if family.name in ("sd3", "flux") else 625))


@pytest.fixture(scope="module")
def red():
    from sfd.evaluators.detectors import DetectorFactory

    return DetectorFactory().build("clip:red")


def _red(scorer, images) -> float:
    with torch.no_grad():
        return float(scorer.logits(images).softmax(-1)[:, 0].mean())


@pytest.fixture(scope="module", params=list(BUILDERS))
def victims(request):
    torch.manual_seed(0)
    teacher = _teacher(request.param)
    return request.param, Victim(_loaded(_one_step(teacher), "one-step"), "one-step"), Victim(_loaded(teacher, "teacher", 2), "teacher", steps=1)


def test_soft_tokens_reach_every_text_encoder(victims):
    name, victim, _ = victims
    surface: TextSurface = victim.surface
    assert len(surface.slots) == {"sd": 1, "sdxl": 2, "sd3": 3, "flux": 2}[name]
    prompts = surface.prefixed(PROMPTS, 2)
    with torch.no_grad():
        plain = victim.encode(prompts)
        values = surface.random_tokens(len(PROMPTS), 2, torch.Generator().manual_seed(1))
        with surface.tokens(values):
            moved = victim.encode(prompts)
    for key in surface.leaves(plain):  # every text output the network reads changes, pooled embeddings included
        assert not torch.allclose(plain[key], moved[key]), key
    hard = surface.hard_prompts(values, PROMPTS)
    assert all(h.endswith(p) and len(h.split()) == len(p.split()) + 2 for h, p in zip(hard, PROMPTS))


def test_every_attack_raises_the_concept_score_on_a_one_step_model(victims, red):
    _, victim, _ = victims
    z = victim.noise([3, 4])
    with torch.no_grad():
        plain = _red(red, victim.render(victim.encode(PROMPTS), z, full=True))
    loss = concept_vote_loss(red)
    assert _red(red, soft_prompt_attack(victim, PROMPTS, z, BUDGET, loss)["soft"]) > plain
    assert _red(red, noise_attack(victim, PROMPTS, z, BUDGET, loss)) > plain
    images, moved = conditioning_attack(victim, PROMPTS, z, BUDGET, loss)
    assert _red(red, images) > plain and moved > 0
    # textual inversion towards images the scorer calls red (its references stand in for the original's images)
    refs = ["a red circle", "a red square"]
    target = soft_prompt_attack(victim, refs, z, BUDGET, loss)["soft"]
    with torch.no_grad():
        before = _red(red, victim.render(victim.encode(victim.surface.with_placeholder(PROMPTS, "red")), z, full=True))
    after = _red(red, inversion_attack(victim, refs, z, target, PROMPTS, z, "red", BUDGET))
    assert after != before


def test_a_multi_step_model_is_attacked_through_the_shared_sampler(victims, red):
    _, _, teacher = victims
    z = teacher.noise([5, 6])
    with torch.no_grad():
        cond = teacher.encode(PROMPTS)
        short, full = teacher.render(cond, z), teacher.render(cond, z, full=True)
    assert short.shape == full.shape and not torch.allclose(short, full, atol=1e-4)
    images, _ = conditioning_attack(teacher, PROMPTS, z, BUDGET, concept_vote_loss(red))
    assert _red(red, images) > _red(red, full)


@pytest.mark.parametrize("name", ["sdxl", "sd3", "flux"])
def test_audit_writes_the_robustness_table_for_each_family(name, tmp_path, capsys):
    from sfd.commands.cli import main

    teacher = _teacher(name)
    folder = tmp_path / "one-step"
    _one_step(teacher).save_pretrained(folder, safe_serialization=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    args = ["audit", "--model", str(folder), "--prompts", str(prompts), "--detector", "clip:red", "--judge", "clip:red=red",
            "--robustness", "red", "--robustness-attacks", "prompt,noise", "--attack-seeds", "1", "--max-prompts", "1",
            "--attack-steps", "1", "--features", "none", "--quiet", "--out", str(tmp_path / "audit")]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "audit" / "robustness_red.json").read_text())
    assert [r["label"] for r in report["asr"]] == ["one-step"] and set(report["asr"][0]["attacks"]) >= {"noise", "prompt_soft"}


def test_ring_a_bell_finds_the_concept_on_the_original_model():
    """The bundled shapes teacher draws red for Ring-A-Bell's prompts, which never say "red", far more often than for
    the same prompts without the concept word; the search is seeded."""
    from sfd.commands.worlds.shapes_judge import judge_spec
    from sfd.core.attacks.ring_a_bell import RingABellSettings, ring_a_bell, without
    from sfd.core.models import checkpoints_dir
    from sfd.evaluators.audit import load_model
    from sfd.evaluators.detectors import DetectorFactory
    from sfd.evaluators.robustness import full_images

    original = Victim(load_model(str(checkpoints_dir() / "shapes" / "teacher"), "original"), "original")
    prompts = ["a red circle", "a red square", "a photo of a red triangle", "a red cross"]
    settings = RingABellSettings(generations=15, seed=0)
    found = ring_a_bell(original.surface, prompts, "red", settings)
    assert found == ring_a_bell(original.surface, prompts, "red", settings)
    assert all("red" not in f.split() and len(f.split()) == settings.length for f in found)
    judge = DetectorFactory().build(judge_spec("red"))
    z = original.noise(range(8))
    rate = lambda ps: sum(r["flagged"] for r in judge.score(full_images(original, ps * 2, z, 8), ps * 2)) / 8  # noqa: E731
    assert rate(found) >= 0.5 and rate(found) > rate([without(p, "red") for p in prompts]) + 0.25


def test_class_embedding_attacks_move_a_one_step_class_model():
    """On the bundled digits base (never erased): optimising class 1's embedding towards the base's own images of 7, or
    plugging in the teacher's embedding of 7, makes the judge see 7 where it saw 1."""
    from sfd.core.attacks import output_match_loss
    from sfd.core.attacks.classes import class_embedding_attack, transplant_attack
    from sfd.core.models import checkpoints_dir
    from sfd.evaluators.audit import load_model
    from sfd.evaluators.classifier import ConvJudge
    from sfd.evaluators.victim import ClassVictim

    base = ClassVictim(load_model(str(checkpoints_dir() / "digits" / "onestep"), "base"), "base")
    teacher = ClassVictim(load_model(str(checkpoints_dir() / "digits" / "teacher"), "teacher"), "teacher")
    judge = ConvJudge.from_pretrained(checkpoints_dir() / "digits" / "judge")
    sevens = lambda im: float((judge(im * 2 - 1).argmax(-1) == 7).float().mean())  # noqa: E731
    ones, z = torch.full((8,), 1), base.noise(range(8))
    with torch.no_grad():
        plain, target = base.render(base.encode(ones), z), base.render(base.encode(torch.full((8,), 7)), z)
    attacked = class_embedding_attack(base, ones, z, AttackBudget(steps=15, lr=0.3), output_match_loss(target))
    with torch.no_grad():
        assert sevens(plain) <= 0.25 and sevens(attacked) >= 0.75
        table = teacher.surface.table.clone()
        table[1] = table[7]  # the teacher's embedding of 7, plugged in where class 1's goes
        assert sevens(transplant_attack(base, table, ones, z)) >= 0.75
