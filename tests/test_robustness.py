"""Attacks with a held-out judge (sfd.evaluators.robustness): each attack raises the concept on a never-erased model,
the held-out judges are accurate, ASR is counted pre + post over ideal pairs, bad settings give one line."""

import pytest
import torch

from sfd.evaluators.audit import load_model
from sfd.evaluators.detectors import DetectorFactory
from sfd.core.attacks import (concept_vote_loss, conditioning_attack, inversion_attack, noise_attack, output_match_loss,
                              soft_prompt_attack)
from sfd.evaluators.robustness import (ATTACK_COLUMNS, DEFAULT_ATTACKS, NO_PAIRS, NOT_RUN, TABLE_COLUMNS, RobustnessSettings, Victim,
                                       asr_table, attack_victim, budget, reference_set, table_rows)
from sfd.kernel.errors import SFDError
from sfd.core.models import checkpoints_dir
from sfd.commands.worlds.shapes_judge import ATTRIBUTES, FOLDERS, heldout_accuracy, judge_spec

PROMPTS = ["a blue circle", "a green square", "a yellow triangle", "a purple cross"]


@pytest.fixture(scope="module")
def distilled():
    """The bundled one-step distillation: never erased."""
    return Victim(load_model(str(checkpoints_dir() / "shapes" / "onestep"), "distilled"), "distilled", role="control")


@pytest.fixture(scope="module")
def red_clip():
    return DetectorFactory().build("clip:red")


def _red_prob(scorer, images):
    with torch.no_grad():
        return float(scorer.logits(images).softmax(-1)[:, 0].mean())


@pytest.mark.parametrize("attribute", list(ATTRIBUTES))
def test_heldout_judges_are_accurate_on_fresh_renders(attribute):
    from sfd.evaluators.classifier import ConvJudge

    judge = ConvJudge.from_pretrained(checkpoints_dir() / "shapes" / FOLDERS[attribute])
    acc = heldout_accuracy(judge, attribute, n=600, seed=4242)  # a seed neither training nor the bundled record used
    assert acc["clean"]["accuracy"] >= 0.95 and acc["augmented"]["accuracy"] >= 0.95
    assert min(acc["clean"]["per_class"].values()) >= 0.9
    assert judge_spec("red").endswith("judge-colour=red") and judge_spec("cross").endswith("judge-shape=cross")
    assert judge_spec("dog") is None


def test_prompt_and_noise_attacks_raise_the_concept_score(distilled, red_clip):
    cfg = RobustnessSettings("red", steps=8, soft_tokens=3)
    z = distilled.noise(range(len(PROMPTS)))
    with torch.no_grad():
        plain = distilled.render(distilled.encode(PROMPTS), z, full=True)
    r = soft_prompt_attack(distilled, PROMPTS, z, budget(cfg), concept_vote_loss(red_clip))
    assert _red_prob(red_clip, r["soft"]) > _red_prob(red_clip, plain) + 0.05
    assert len(r["hard_prompts"]) == len(PROMPTS) and all(h.endswith(p) for h, p in zip(r["hard_prompts"], PROMPTS))
    noisy = noise_attack(distilled, PROMPTS, z, budget(cfg), concept_vote_loss(red_clip))
    assert _red_prob(red_clip, noisy) > _red_prob(red_clip, plain)


def test_match_and_inversion_attacks_move_towards_the_originals_images(distilled, red_clip):
    cfg = RobustnessSettings("red", steps=8, inversion_refs=6, inversion_steps=10)
    z = distilled.noise(range(len(PROMPTS)))
    red_prompts = [p.split(" ", 2)[0] + " red " + p.split(" ", 2)[2] for p in PROMPTS]
    with torch.no_grad():
        target = distilled.render(distilled.encode(red_prompts), z, full=True)
        plain = distilled.render(distilled.encode(PROMPTS), z, full=True)
    r = soft_prompt_attack(distilled, PROMPTS, z, budget(cfg), output_match_loss(target))
    assert (r["soft"] - target).square().mean() < (plain - target).square().mean()
    refs = reference_set(distilled, "red", cfg)
    assert len(refs[0]) == 6 and all("red" in p for p in refs[0])
    tests = ["a red circle", "a red square"]
    tz = distilled.noise([91, 92])
    with torch.no_grad():
        before = distilled.render(distilled.encode(distilled.surface.with_placeholder(tests, "red")), tz, full=True)
    after = inversion_attack(distilled, *refs, tests, tz, "red", budget(cfg))
    assert _red_prob(red_clip, after) > _red_prob(red_clip, before)


def test_conditioning_attack_matches_the_originals_images_and_is_opt_in(distilled, red_clip):
    cfg = RobustnessSettings("red", attacks=("conditioning",), steps=8, lr=0.3)
    assert RobustnessSettings("red").attacks == DEFAULT_ATTACKS and "conditioning" not in DEFAULT_ATTACKS
    pairs = [(p, 10 + i) for i, p in enumerate(PROMPTS)]
    z = distilled.noise([s for _, s in pairs])
    red_prompts = [p.split(" ", 2)[0] + " red " + p.split(" ", 2)[2] for p in PROMPTS]
    with torch.no_grad():
        target = distilled.render(distilled.encode(red_prompts), z, full=True)
        plain = distilled.render(distilled.encode(PROMPTS), z, full=True)
    images, moved = conditioning_attack(distilled, PROMPTS, z, budget(cfg), output_match_loss(target))
    assert (images - target).square().mean() < 0.7 * (plain - target).square().mean() and moved > 0
    assert _red_prob(red_clip, images) > _red_prob(red_clip, plain) + 0.05
    out = attack_victim(distilled, pairs, target, None, red_clip, red_clip, cfg, log=lambda *_: None)
    assert list(out["attacks"]) == ["match_cond"] and len(out["attacks"]["match_cond"]["flags"]) == len(PROMPTS)
    assert sum(out["attacks"]["match_cond"]["flags"]) > sum(out["plain_flags"])


def test_multi_step_victims_are_attacked_through_a_short_sampler_and_judged_on_the_full_one():
    teacher = Victim(load_model(str(checkpoints_dir() / "shapes" / "teacher"), "original"), "original", steps=1)
    z = teacher.noise([0, 1])
    h = teacher.encode(["a red circle", "a blue square"])
    with torch.no_grad():
        short, full = teacher.render(h, z), teacher.render(h, z, full=True)
    assert short.shape == full.shape and not torch.allclose(short, full, atol=1e-3)
    away = Victim(teacher.model, "neg", negative_prompt="red", negative_guidance=7.5)
    with torch.no_grad():
        assert not torch.allclose(away.render(h, z, full=True), full, atol=1e-3)


def test_asr_is_pre_plus_post_over_ideal_pairs():
    rows = [{"label": "erased", "role": "erased", "plain_flags": [True, False, False, False, True],
             "attacks": {"prompt_soft": {"flags": [False, True, False, False, True], "seconds": 1.0}}}]
    ideal = [True, True, True, True, False]  # the last pair: the original does not show the concept
    e = asr_table(rows, ideal)[0]
    a = e["attacks"]["prompt_soft"]
    assert e["plain"]["n"] == 4 and e["plain"]["rate"] == 0.25
    assert a["pre"] == 0.25 and a["post"] == 0.25 and a["total"]["rate"] == 0.5
    assert a["p4d"]["n"] == 3 and a["p4d"]["flagged"] == 1
    assert a["total"]["ci_low"] < 0.5 < a["total"]["ci_high"]


def test_table_cells_say_not_run_and_no_pairs_instead_of_staying_blank():
    rows = [{"label": "erased", "role": "erased", "plain_flags": [True, False, False],
             "attacks": {"noise": {"flags": [False, True, False], "seconds": 1.0}}}]
    cells = dict(zip(TABLE_COLUMNS, table_rows("red", asr_table(rows, [True, True, True]), {})[0]))
    assert cells["ASR noise"].startswith("67% [") and cells["plain rate"].startswith("33% [")
    assert all(cells[f"ASR {a}"] == NOT_RUN for a in ATTACK_COLUMNS if a != "noise")
    cells = dict(zip(TABLE_COLUMNS, table_rows("red", asr_table(rows, [False, False, False]), {})[0]))  # no ideal pair at all
    assert cells["plain rate"] == cells["ASR noise"] == cells["ASR any"] == NO_PAIRS and cells["ASR inversion"] == NOT_RUN


@pytest.mark.parametrize("kw, needle", [({"attacks": ("prompt", "bogus")}, "unknown attack 'bogus'"), ({"steps": 0}, "attack steps must be >= 1"),
                                        ({"soft_tokens": 40}, "soft tokens must be <= 16"), ({"lr": 0.0}, "learning rate must be > 0"),
                                        ({"concept": " "}, "concept is empty")])
def test_bad_attack_settings_give_one_clear_line(kw, needle):
    with pytest.raises(SFDError) as e:
        RobustnessSettings(**{"concept": "red", **kw}).validate()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_audit_writes_the_robustness_table_with_controls(tmp_path, capsys):
    """`sfd audit --robustness red`: the original first, the negative-prompt control, the distilled base recognised as a
    control from its summary; the table's files, and a judge equal to the optimised scorer refused in one line."""
    import json

    from sfd.commands.cli import main

    shapes_dir = checkpoints_dir() / "shapes"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    args = ["audit", "--model", str(shapes_dir / "teacher"), "--model", str(shapes_dir / "onestep"), "--prompts", str(prompts),
            "--detector", judge_spec("red"), "--robustness", "red", "--negative-control", "--robustness-attacks", "noise",
            "--attack-seeds", "1", "--max-prompts", "2", "--attack-steps", "1", "--features", "none", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "audit")]) == 0
    report = json.loads((tmp_path / "audit" / "robustness_red.json").read_text())
    assert [(r["label"], r["role"]) for r in report["asr"]] == [("teacher", "original"), ("teacher + negative prompt", "control"),
                                                                 ("onestep", "control")]
    assert report["n_pairs"] == 2 and set(report["asr"][0]["attacks"]) == {"noise"} and report["judge"] != report["scorer"]
    for ext in ("csv", "html"):
        assert (tmp_path / "audit" / f"robustness_red.{ext}").is_file()
    assert "robustness table:" in capsys.readouterr().out
    assert main(args + ["--judge", "clip:red", "--out", str(tmp_path / "again")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optimised scorer" in err[0] and not (tmp_path / "again").exists()  # refused before any work
