"""`sfd audit` / `sfd attack` and their evaluators on tiny random models: prompt sets, detectors, statistics,
resume after interruption, reports, bad inputs, the adversarial probe.

Everything is built offline from configs (tiny Stable Diffusion parts, a tiny open_clip CLIP, a digits judge
trained for a few steps); the bundled world checkpoints are used only by skip-if-missing tests.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sfd.evaluators import audit as audit_mod
from sfd.evaluators.attack import AttackSettings, gradient_search, run_attack, synonyms_for
from sfd.evaluators.audit import AuditSettings, difference_interval, load_model, mcnemar_exact, run_audit, wilson_interval
from sfd.evaluators.detectors import ClassifierDetector, ClipDetector, DetectorFactory, feature_extractor, fid_kid, parse_spec
from sfd.evaluators.prompt_sets import PromptItem, image_seed, load_prompt_set
from sfd.kernel.errors import SFDError

FIXTURES = Path(__file__).parent / "fixtures"
BUNDLED = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and the machine is shared); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny SD teacher + one-step generator + tiny CLIP + a briefly trained digits judge, saved as folders."""
    from conftest import build_tiny_sd
    from sfd.evaluators.clip import ClipEvaluator
    from sfd.pipelines import OneStepTextPipeline
    from sfd.commands.worlds import digits, shapes

    root = tmp_path_factory.mktemp("audit_world")
    sd = build_tiny_sd()
    sd.save_pretrained(root / "teacher", safe_serialization=True)
    one = OneStepTextPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet, scheduler=sd.scheduler, t_init=625)
    one.save_pretrained(root / "erased", safe_serialization=True)
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    ClipEvaluator.from_config(cfg, shapes.CLIP_MEAN, shapes.CLIP_STD, seed=0).save_pretrained(root / "clip", dtype=torch.float32)
    judge, _ = digits.train_judge(digits.JudgeTrainConfig(steps=80, batch_size=64), progress=False)
    judge.save_pretrained(root / "judge")
    (root / "prompts.txt").write_text("# shapes\na red circle\na blue square\na photo of a red cross\n")
    return {"root": root, "teacher": root / "teacher", "erased": root / "erased", "clip": root / "clip", "judge": root / "judge",
            "prompts": root / "prompts.txt"}


def clip_spec(world, concept="red", extra=""):
    return f"clip:{concept}@{world['clip']}{extra}"


# ------------------------------------------------------------------------------------------ prompt sets

def test_i2p_csv_with_extra_columns_categories_and_seeds():
    ps = load_prompt_set(FIXTURES / "i2p_sample.csv")
    assert ps.format == "csv" and len(ps) == 6 and ps.total_in_file == 6
    first = ps.items[0]
    assert first.prompt == "a red circle, highly detailed" and first.seed == 2734 and first.guidance == 7.0
    assert first.categories == ("sexual", "violence") and first.id == "11"
    assert ps.items[2].prompt.startswith('a "quoted" green') and ps.items[2].seed == 99  # "99.0" in the file
    assert ps.items[3].seed is None and ps.items[3].guidance is None  # empty cells
    sexual = load_prompt_set(FIXTURES / "i2p_sample.csv", categories=["Sexual"])
    assert [it.index for it in sexual.items] == [0, 3, 5]  # positions in the file are kept
    assert load_prompt_set(FIXTURES / "i2p_sample.csv", categories=["hate", "shocking"], limit=1).items[0].index == 1


def test_txt_and_jsonl_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("\ufeff# comment\na cat\n\n  a dog  \n")
    assert load_prompt_set(tmp_path / "p.txt").prompts == ["a cat", "a dog"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat", "seed": 5, "categories": ["Sexual"]}\n\n'
                                      '{"prompt": "a dog", "evaluation_guidance": 3.5, "categories": "a, b"}\n')
    ps = load_prompt_set(tmp_path / "p.jsonl")
    assert ps.items[0].seed == 5 and ps.items[0].categories == ("sexual",)
    assert ps.items[1].guidance == 3.5 and ps.items[1].categories == ("a", "b") and ps.items[1].line == 3


def test_image_seed_rule():
    assert image_seed(PromptItem(index=7, prompt="x", seed=2734), 0, 5) == 2734
    assert image_seed(PromptItem(index=7, prompt="x", seed=2734), 3, 5) == 2737
    assert image_seed(PromptItem(index=7, prompt="x"), 3, 5) == 5 * 10**9 + 7 * 10**4 + 3
    with pytest.raises(SFDError):
        image_seed(PromptItem(index=0, prompt="x"), 10**4, 0)


@pytest.mark.parametrize("name,text,needle", [
    ("empty.txt", "\n# only a comment\n", "holds no prompts"),
    ("empty.csv", "", "holds no prompts"),
    ("nocol.csv", "text,seed\na cat,1\n", "needs a 'prompt' column"),
    ("short.csv", "prompt,evaluation_seed,evaluation_guidance\na cat,1,7\na dog,2\n", "short.csv:3: malformed row"),
    ("seed.csv", "prompt,evaluation_seed\na cat,1\na dog,abc\n", "seed.csv:3: evaluation_seed must be a non-negative integer"),
    ("neg.csv", "prompt,evaluation_seed\na cat,-4\n", "neg.csv:2: evaluation_seed"),
    ("guid.csv", "prompt,evaluation_guidance\na cat,lots\n", "guid.csv:2: evaluation_guidance must be a number"),
    ("blank.csv", "prompt,seed\n ,1\n", "blank.csv:2: empty prompt"),
    ("bad.jsonl", '{"prompt": "a cat"}\n{"prompt": "a dog"\n', "bad.jsonl:2: malformed row"),
    ("noprompt.jsonl", '{"text": "a cat"}\n', "noprompt.jsonl:1: malformed row"),
    ("seed.jsonl", '{"prompt": "a cat", "seed": 1.5}\n', "seed.jsonl:1: seed must be a non-negative integer"),
])
def test_prompt_file_errors_name_file_and_line(tmp_path, name, text, needle):
    (tmp_path / name).write_text(text)
    with pytest.raises(SFDError, match=None) as e:
        load_prompt_set(tmp_path / name)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_prompt_file_missing_and_category_errors(tmp_path):
    with pytest.raises(SFDError, match="does not exist"):
        load_prompt_set(tmp_path / "nope.txt")
    with pytest.raises(SFDError, match="no prompt .* has category nudity; categories there: hate, sexual, shocking, violence"):
        load_prompt_set(FIXTURES / "i2p_sample.csv", categories=["nudity"])
    (tmp_path / "p.txt").write_text("a cat\n")
    with pytest.raises(SFDError, match="has no categories"):
        load_prompt_set(tmp_path / "p.txt", categories=["sexual"])


# ------------------------------------------------------------------------------------------ statistics

def test_wilson_newcombe_mcnemar_reference_values():
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(5, 10) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 0) == (None, None)
    # Newcombe (1998), example (a): 56/70 - 48/80, method 10 -> 0.0524 to 0.3339.
    lo, hi = difference_interval(56, 70, 48, 80)
    assert lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(0, 6) == pytest.approx(2 / 64)


# ------------------------------------------------------------------------------------------- detectors

def test_detector_spec_parsing_and_errors():
    s = parse_spec('clip:"Van Gogh style"@/m;vs=a photo,a cat;threshold=0.7')
    assert s.kind == "clip" and s.main == '"Van Gogh style"@/m' and s.options == {"vs": "a photo,a cat", "threshold": "0.7"}
    assert parse_spec("'nudenet:0.6'").main == "0.6"
    for bad, needle in [("dalle:red", "unknown detector"), ("clip:red;colour=1", "unknown option"), ("", "empty --detector"),
                        ("nudenet;threshold=0.3", "unknown option")]:
        with pytest.raises(SFDError, match=needle):
            parse_spec(bad)


def test_clip_detector_defaults_thresholds_and_settings(world):
    f = DetectorFactory()
    det = f.build(clip_spec(world))
    assert isinstance(det, ClipDetector) and det.contrasts == ("green", "blue", "yellow", "purple")
    assert det.templates == ("a photo of a {} shape",) and det.settings["model"]["weights_sha256"]
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    res = det.score(images, ["a red circle"] * 5)
    assert len(res) == 5 and {"flagged", "score", "clip_score", "top"} <= res[0].keys()
    probs = torch.tensor([r["score"] for r in res])
    assert ((probs >= 0) & (probs <= 1)).all()
    assert all(r["flagged"] == (r["top"] == "red") for r in res)
    # A calibrated threshold replaces the vote; the CLIP model is loaded once for both specs.
    always = f.build(clip_spec(world, extra=";threshold=0"))
    assert all(r["flagged"] for r in always.score(images, ["x"] * 5)) and always.settings["threshold"] == 0.0
    assert always.clip is det.clip
    generic = f.build(f'clip:"Van Gogh style"@{world["clip"]};vs=a photo,a cat')
    assert generic.concept == "Van Gogh style" and generic.contrasts == ("a photo", "a cat")
    assert generic.settings["contrasts_source"] == "given (vs=)"
    assert f.build(f"clip:nudity@{world['clip']}").settings["contrasts_source"] == "generic neutral list"
    with pytest.raises(SFDError, match="no CLIP model"):
        f.build(f"clip:red@{world['root']}")
    with pytest.raises(SFDError, match="neither a folder nor NAME:TAG"):
        f.build("clip:red@no-such-model")


def test_classifier_detector_on_digits(world):
    from sfd.core.worlds.digits import load_digits_tensors

    x, y = load_digits_tensors()
    images = (x[:300] + 1) / 2  # audits hand detectors images in [0, 1]
    det = DetectorFactory().build(f"classifier:{world['judge']}=3")
    assert isinstance(det, ClassifierDetector) and det.settings["concept_classes"] == ["three"] and det.settings["weights_sha256"]
    res = det.score(images, [""] * 300)
    preds = torch.tensor([r["pred"] for r in res])
    assert (preds == y[:300]).float().mean() > 0.6  # a judge trained for 80 steps: well above chance (0.1)
    assert all(r["flagged"] == (r["pred"] == 3) for r in res)
    # RGB images of another size are turned grey and resized to the judge's input.
    rgb = torch.nn.functional.interpolate(images[:20], size=32, mode="nearest").expand(-1, 3, -1, -1)
    assert [r["pred"] for r in det.score(rgb, [""] * 20)] == [r["pred"] for r in res[:20]]
    with pytest.raises(SFDError, match="unknown class"):
        DetectorFactory().build(f"classifier:{world['judge']}=eleven")
    with pytest.raises(SFDError, match="needs the concept class"):
        DetectorFactory().build(f"classifier:{world['judge']}")
    with pytest.raises(SFDError, match="no classifier judge"):
        DetectorFactory().build(f"classifier:{world['root']}=3")


@pytest.mark.skipif(not (BUNDLED / "digits" / "judge").is_dir(), reason="bundled digits judge not built")
def test_bundled_digits_judge_as_detector():
    from sfd.core.worlds.digits import load_digits_tensors

    x, y = load_digits_tensors()
    det = DetectorFactory().build(f"classifier:{BUNDLED / 'digits' / 'judge'}=1")
    res = det.score((x[:200] + 1) / 2, [""] * 200)
    assert (torch.tensor([r["pred"] for r in res]) == y[:200]).float().mean() > 0.95


def test_nudenet_logic_with_a_stub_detector():
    from sfd.evaluators.nudenet import NudeNetDetector, parse_classes

    class Stub:
        def detect_batch(self, arrays, batch_size=4):
            assert arrays[0].dtype.name == "uint8" and arrays[0].shape == (8, 8, 3)
            return [[{"class": "FEMALE_BREAST_EXPOSED", "score": 0.5, "box": [0, 0, 2, 2]}],
                    [{"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 2, 2]}, {"class": "FEET_EXPOSED", "score": 0.3, "box": [1, 1, 2, 2]}],
                    []]

    images = torch.rand(3, 3, 8, 8)
    res = NudeNetDetector(0.45, parse_classes("exposed"), detector=Stub()).score(images, [""] * 3)
    assert [r["flagged"] for r in res] == [True, False, False] and [r["score"] for r in res] == [0.5, 0.3, 0.0]
    assert res[1]["n_other_boxes"] == 1
    res = NudeNetDetector(0.6, parse_classes("sexual"), detector=Stub()).score(images, [""] * 3)
    assert [r["flagged"] for r in res] == [False, False, False]
    assert parse_classes("FEET_EXPOSED, belly_exposed") == ("FEET_EXPOSED", "BELLY_EXPOSED")
    with pytest.raises(SFDError, match="unknown NudeNet class"):
        parse_classes("ELBOW_EXPOSED")


def test_nudenet_runs_offline_on_a_synthetic_image():
    pytest.importorskip("nudenet", reason="nudenet (optional extra) not installed")
    det = DetectorFactory().build("nudenet")
    assert det.name == "nudenet:0.45" and det.settings["threshold"] == 0.45
    assert det.settings["classes"] == [c for c in det.settings["classes"] if c.endswith("_EXPOSED")] and len(det.settings["classes"]) == 9
    assert det.settings["nudenet_version"] and det.settings["onnxruntime_version"] and det.settings["model"]["sha256"]
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    image = torch.stack([x, y, 1 - x]).unsqueeze(0)  # a smooth colour ramp: nothing to find
    res = det.score(image, ["a colour ramp"])
    assert res == [{"flagged": False, "score": 0.0, "detections": [], "n_other_boxes": 0}]
    other = DetectorFactory().build("nudenet:0.6;classes=sexual")
    assert other.name == "nudenet:0.6;classes=sexual" and other.settings["classes"][0] == "BUTTOCKS_EXPOSED"


def test_importing_sfd_and_the_audit_does_not_import_nudenet_or_gradio():
    code = ("import sys, sfd, sfd.commands.cli, sfd.commands.cli_audit, sfd.evaluators.audit, sfd.evaluators.detectors, sfd.evaluators.report, sfd.evaluators.attack; "
            "bad = [m for m in ('nudenet', 'onnxruntime', 'gradio', 'playwright') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_fid_kid_between_image_sets(world):
    ext = feature_extractor(f"clip@{world['clip']}")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(24, 3, 16, 16, generator=g)
    same = fid_kid(a, a.clone(), ext)
    assert abs(same["fid"]) < 1e-4 and same["features"]["kind"] == "clip image embedding"
    dark = fid_kid(a, a * 0.2, ext)
    assert dark["fid"] > 1e-3 and dark["n_a"] == dark["n_b"] == 24
    judge_feats = feature_extractor(f"classifier:{world['judge']}")
    assert fid_kid(a, a * 0.2, judge_feats)["fid"] > 0


# ---------------------------------------------------------------------------------------------- audits

def audit_settings(world, **kw):
    base = dict(models=(str(world["teacher"]), str(world["erased"])), prompts=str(world["prompts"]),
                detectors=(clip_spec(world),), n_per_prompt=2, seed=3, steps=2, batch_size=4)
    base.update(kw)
    return AuditSettings(**base)


def test_audit_of_two_models_writes_comparable_reports(world, tmp_path):
    out = tmp_path / "audit"
    rep = run_audit(audit_settings(world), out, progress=False, log=lambda m: None)
    labels = ["teacher", "erased"]
    assert [m["label"] for m in rep["settings"]["models"]] == labels
    assert rep["settings"]["models"][0]["steps"] == 2 and rep["settings"]["models"][1]["one_step"]
    assert len(rep["images"]) == 2 * 3 * 2
    seeds = {lab: [(r["prompt_index"], r["image"], r["seed"]) for r in rep["images"] if r["model"] == lab] for lab in labels}
    assert seeds["teacher"] == seeds["erased"] and seeds["teacher"][1] == (0, 1, 3 * 10**9 + 1)
    name = clip_spec(world)
    for lab in labels:
        s = rep["summary"][lab][name]
        assert s["n"] == 6 and 0 <= s["ci_low"] <= s["rate"] <= s["ci_high"] <= 1 and "mean_clip_score" in s
    c = rep["comparison"]["models"]["erased"][name]
    assert c["pairs"] == 6 and c["both"] + c["only_reference"] + c["only_model"] + c["neither"] == 6
    assert rep["comparison"]["fid_kid"]["erased"]["features"]["kind"] == "clip image embedding"
    assert set(rep["settings"]["packages"]) >= {"sfd", "torch", "diffusers", "open_clip_torch"}
    assert rep["settings"]["timings"]["teacher"]["generated"] == 6
    # Files: PNGs, three reports and summary.csv; PNG re-scoring gives the recorded score (images are quantised first).
    saved = json.loads((out / "report.json").read_text())
    assert saved["summary"] == rep["summary"]
    rec = rep["images"][0]
    img = audit_mod.load_png(out / rec["path"]).unsqueeze(0)
    det = DetectorFactory().build(name)
    assert det.score(img, [rec["prompt"]])[0]["score"] == pytest.approx(rec["scores"][name]["score"], abs=1e-5)
    csv_lines = (out / "report.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 6 and "teacher path" in csv_lines[0] and "erased path" in csv_lines[0]
    summary = (out / "summary.csv").read_text()
    assert "difference_vs_reference" in summary and summary.count("\n") == 3
    html = (out / "report.html").read_text()
    assert html.count('<figure class="cell') == 12 and "<svg" in html and "Comparison with teacher" in html
    assert 'src="http' not in html and 'href="http' not in html


def test_audit_resumes_after_interruption_and_matches_an_uninterrupted_run(world, tmp_path):
    settings = audit_settings(world, models=(str(world["erased"]),), n_per_prompt=3, batch_size=4)
    full = run_audit(settings, tmp_path / "full", progress=False, log=lambda m: None)

    class Killed(Exception):
        pass

    def kill_after(k):
        seen = []

        def hook(rec):
            seen.append(rec)
            if len(seen) == k:
                raise Killed
        return hook

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        run_audit(settings, out, progress=False, log=lambda m: None, on_record=kill_after(5))
    lines = (out / "images.jsonl").read_text().splitlines()
    assert len(lines) == 5 and not (out / "report.json").exists()
    first = {json.loads(l)["path"]: (out / json.loads(l)["path"]).stat().st_mtime_ns for l in lines}
    with open(out / "images.jsonl", "a") as f:  # a line cut short by the kill
        f.write('{"model": "erased", "model_index": 0, "prompt_ind')
    messages = []
    resumed = run_audit(settings, out, progress=False, log=messages.append)
    assert any("5 finished image(s) reused" in m for m in messages)
    assert resumed["settings"]["timings"]["erased"]["reused"] == 5 and resumed["settings"]["timings"]["erased"]["generated"] == 4
    assert all((out / p).stat().st_mtime_ns == t for p, t in first.items())  # reused, not regenerated
    assert len((out / "images.jsonl").read_text().splitlines()) == 9
    strip = lambda recs: [{k: v for k, v in r.items() if k != "scores"} for r in recs]  # noqa: E731
    assert strip(resumed["images"]) == strip(full["images"])
    name = clip_spec(world)
    for a, b in zip(resumed["images"], full["images"]):
        assert a["scores"][name]["flagged"] == b["scores"][name]["flagged"]
        assert a["scores"][name]["score"] == pytest.approx(b["scores"][name]["score"], abs=1e-4)
    # Equal up to float batch effects (a resumed batch holds other images than the uninterrupted one).
    numbers = lambda s: {k: v for k, v in s.items() if k != "detector"}  # noqa: E731
    assert numbers(resumed["summary"]["erased"][name]) == pytest.approx(numbers(full["summary"]["erased"][name]), abs=1e-4)
    assert resumed["summary"]["erased"][name]["detector"] == full["summary"]["erased"][name]["detector"]
    # A finished audit without --overwrite: nothing is generated again, reports are rebuilt.
    messages.clear()
    again = run_audit(settings, out, progress=False, log=messages.append)
    assert any("already in" in m for m in messages) and again["settings"]["timings"]["erased"]["generated"] == 0
    # Other settings are refused; --overwrite starts over.
    with pytest.raises(SFDError, match="other settings .*n_per_prompt"):
        run_audit(audit_settings(world, models=(str(world["erased"]),), n_per_prompt=1), out, progress=False, log=lambda m: None)
    fresh = run_audit(audit_settings(world, models=(str(world["erased"]),), n_per_prompt=1), out, overwrite=True, progress=False,
                      log=lambda m: None)
    assert len(fresh["images"]) == 3 and len((out / "images.jsonl").read_text().splitlines()) == 3


def test_model_identity_survives_a_copy_but_not_new_weights(world, tmp_path):
    import shutil

    from sfd.evaluators.audit import model_identity

    shutil.copytree(world["erased"], tmp_path / "copy")
    assert model_identity(str(tmp_path / "copy")) == model_identity(str(world["erased"])) != {}
    f = next((tmp_path / "copy" / "unet").glob("*.safetensors"))
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # a changed weight near the end of the file
    f.write_bytes(bytes(data))
    assert model_identity(str(tmp_path / "copy")) != model_identity(str(world["erased"]))


def test_audit_of_a_class_conditional_model_with_a_judge(world, tiny_teacher_dir, tmp_path):
    from sfd.evaluators.classifier import ConvJudge, JudgeConfig

    torch.manual_seed(0)
    ConvJudge(JudgeConfig(num_classes=4, class_names=("zero", "one", "two", "three"))).save_pretrained(tmp_path / "judge4")
    (tmp_path / "classes.txt").write_text("one\n2\n")
    rep = run_audit(AuditSettings(models=(str(tiny_teacher_dir),), prompts=str(tmp_path / "classes.txt"),
                                  detectors=(f"classifier:{tmp_path / 'judge4'}=one",), steps=2, n_per_prompt=2),
                    tmp_path / "out", progress=False, log=lambda m: None)
    assert rep["settings"]["models"][0]["kind"] == "class" and len(rep["images"]) == 4
    (tmp_path / "bad.txt").write_text("a red circle\n")
    with pytest.raises(SFDError, match="each prompt must name a class"):
        run_audit(AuditSettings(models=(str(tiny_teacher_dir),), prompts=str(tmp_path / "bad.txt"),
                                detectors=(f"classifier:{tmp_path / 'judge4'}=one",), steps=2), tmp_path / "out2", progress=False)


# ------------------------------------------------------------------------------------------------ CLI

def run_audit_cli(capsys, *argv):
    from sfd.commands.cli_audit import main

    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code not in (0, None), err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_bad_inputs_are_one_line_errors(world, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.csv").write_text("prompt,evaluation_seed\na cat,1\na dog,1,extra\n")
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{not json")
    ok = ["--prompts", str(world["prompts"]), "--detector", clip_spec(world), "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu"]
    cases = [
        (["--model", str(world["erased"]), "--prompts", str(tmp_path / "missing.txt"), "--detector", clip_spec(world),
          "--out", str(tmp_path / "o")], ["sfd audit: error:", "does not exist"]),
        (["--model", str(world["erased"]), "--prompts", str(tmp_path / "empty.txt"), "--detector", clip_spec(world),
          "--out", str(tmp_path / "o")], ["holds no prompts"]),
        (["--model", str(world["erased"]), "--prompts", str(tmp_path / "bad.csv"), "--detector", clip_spec(world),
          "--out", str(tmp_path / "o")], ["bad.csv:3: malformed row"]),
        (["--model", str(world["erased"]), "--prompts", str(world["prompts"]), "--detector", "dalle:red", "--out", str(tmp_path / "o")],
         ["unknown detector"]),
        (["--model", str(tmp_path / "notamodel"), *ok], ["not a diffusers pipeline folder"]),
        (["--model", str(tmp_path / "broken"), *ok], ["not valid JSON"]),
        (["--model", str(world["prompts"]), *ok], ["is not a folder"]),
        (["--model", str(world["erased"]), "--n-per-prompt", "0", *ok], ["--n-per-prompt must be >= 1"]),
        (["--model", str(world["erased"]), "--guidance", "-1", *ok], ["--guidance must be a non-negative number"]),
        (["--model", str(world["erased"]), "--reference-images", str(tmp_path / "notamodel"), *ok], ["need a folder with at least 2 images"]),
        (["--model", str(world["erased"]), "--prompts", str(world["prompts"]), "--detector", "nudenet:esd;classes=all",
          "--out", str(tmp_path / "o")], ["the preset 'esd' fixes its classes and thresholds"]),
        (["--model", str(world["erased"]), "--prompts", str(world["prompts"]), "--detector", "nudenet:papers",
          "--out", str(tmp_path / "o")], ["or a preset: esd, unlearndiffatk"]),
    ]
    for argv, needles in cases:
        code, _, err = run_audit_cli(capsys, "audit", *argv)
        assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "o").exists()  # nothing was started
    code, _, err = run_audit_cli(capsys, "attack", "--model", str(world["erased"]), "--concept", "red", "--detector",
                                 f"classifier:{world['judge']}=3", "--out", str(tmp_path / "a"))
    assert_one_line_error(code, err, "needs a clip: detector")


def test_cli_audit_runs_and_resumes(world, tmp_path, capsys):
    argv = ["audit", "--model", str(world["erased"]), "--prompts", str(world["prompts"]), "--detector", clip_spec(world),
            "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"]
    code, out, err = run_audit_cli(capsys, *argv)
    assert code == 0, err
    assert "erased  clip:red" in out and "95% CI" in out and "report.html" in out
    code, out, err = run_audit_cli(capsys, *argv[:-1])
    assert code == 0 and "already in" in out


def test_cli_model_with_missing_weights_is_a_one_line_error(world, tmp_path, capsys):
    import shutil

    shutil.copytree(world["erased"], tmp_path / "damaged")
    for f in (tmp_path / "damaged" / "unet").glob("*.safetensors"):
        f.unlink()
    code, _, err = run_audit_cli(capsys, "audit", "--model", str(tmp_path / "damaged"), "--prompts", str(world["prompts"]),
                                 "--detector", clip_spec(world), "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu")
    assert_one_line_error(code, err, "sfd audit: error:", "damaged")


def test_default_clip_model_is_the_shapes_world_one(tmp_path):
    from sfd.evaluators.clip import DEFAULT_PATH

    if (DEFAULT_PATH / "open_clip_config.json").is_file():
        assert DetectorFactory().build("clip:red").settings["model"]["path"] == str(DEFAULT_PATH.resolve())
    else:
        with pytest.raises(SFDError, match="shapes world's CLIP is not built"):
            DetectorFactory().build("clip:red")


def _main_has_audit() -> bool:
    from sfd.commands.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return "audit" in sub.choices


@pytest.mark.skipif(not _main_has_audit(), reason="`audit` is not wired into sfd.commands.cli yet")
def test_sfd_main_audit(world, tmp_path, capsys):
    from sfd.commands.cli import main

    code = main(["audit", "--model", str(world["erased"]), "--prompts", str(world["prompts"]), "--detector", clip_spec(world),
                 "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"])
    assert code == 0 and (tmp_path / "o" / "report.html").is_file()
    try:
        code = main(["audit", "--model", str(world["erased"]), "--prompts", str(tmp_path / "none.txt"), "--detector", clip_spec(world),
                     "--out", str(tmp_path / "o2")])
    except SystemExit as e:
        code = e.code
    assert_one_line_error(code, capsys.readouterr().err, "sfd audit: error:", "does not exist")


# --------------------------------------------------------------------------------------------- attack

def test_synonym_table_and_file(tmp_path):
    assert {"crimson", "scarlet", "cherry red"} <= set(synonyms_for("Red"))
    (tmp_path / "syn.txt").write_text("# mine\nbrick-coloured\ncrimson\n")
    words = synonyms_for("red", str(tmp_path / "syn.txt"), limit=3)
    assert words[:2] == ["brick-coloured", "crimson"] and len(words) == 3
    assert synonyms_for("a made-up concept") == []


def test_gradient_search_raises_the_concept_probability(world):
    model = load_model(str(world["erased"]), "erased")
    det = DetectorFactory().build(clip_spec(world, extra=";threshold=0.999"))  # never reached: all steps run
    items = [PromptItem(index=0, prompt="a red circle")]
    start = gradient_search(model, det, items, [7], AttackSettings(concept="red", attack_steps=0, project=False))
    after = gradient_search(model, det, items, [7], AttackSettings(concept="red", attack_steps=8, project=False))
    assert after[0]["soft_score"] > start[0]["soft_score"] and not after[0]["soft_success"]
    hard = gradient_search(model, det, items, [7], AttackSettings(concept="red", attack_steps=2))
    words = hard[0]["adversarial_tokens"].split()
    assert len(words) == 4 and hard[0]["prompt"].endswith("a red circle")
    # Each adversarial word is a whole-word token: written as text, it tokenizes back to one token.
    tok = model.pipe.tokenizer
    assert all(len(tok(w).input_ids) == 3 for w in words)


def test_attack_reports_asr_next_to_the_plain_rate(world, tmp_path):
    model = load_model(str(world["erased"]), "erased")
    det = DetectorFactory().build(clip_spec(world))
    cfg = AttackSettings(concept="red", n_seeds=2, max_prompts=2, attack_steps=3, max_synonyms=3)
    res = run_attack(model, det, cfg, out=tmp_path, log=lambda m: None)
    assert res["n_pairs"] == 4 and res["base_prompts"] == ["a red circle", "a red square"]  # shapes captions for a colour
    for key in ("plain", "asr"):
        assert {"n", "flagged", "rate", "ci_low", "ci_high"} <= res[key].keys()
    assert res["paraphrase"]["ran"] and res["paraphrase"]["n_prompts_tried"] == 12
    assert res["gradient"]["ran"] and {"asr_soft", "asr_hard", "found", "pairs"} <= res["gradient"].keys()
    assert res["asr"]["rate"] >= max(res["plain"]["rate"], res["paraphrase"]["asr"]["rate"], res["gradient"]["asr_hard"]["rate"])
    for f in res["paraphrase"]["found"] + res["gradient"]["found"]:
        assert (tmp_path / f["path"]).is_file()
    # With a detector that flags everything, every pair succeeds and the found prompts are listed.
    always = DetectorFactory().build(clip_spec(world, extra=";threshold=0"))
    res = run_attack(model, always, AttackSettings(concept="red", n_seeds=1, max_prompts=1, attack_steps=1), out=tmp_path)
    assert res["asr"]["rate"] == 1.0 and res["plain"]["rate"] == 1.0


def test_cli_attack_on_teacher_and_erased_model(world, tmp_path, capsys):
    from sfd.commands.cli_audit import main

    code = main(["attack", "--model", str(world["teacher"]), "--model", str(world["erased"]), "--concept", "red",
                 "--detector", clip_spec(world), "--n-seeds", "1", "--max-prompts", "1", "--attack-steps", "2", "--steps", "2",
                 "--out", str(tmp_path / "att"), "--device", "cpu", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rep = json.loads((tmp_path / "att" / "report.json").read_text())
    assert rep["format"] == "sfd-attack/1"
    assert rep["attack"]["teacher"]["gradient"]["ran"] is False and "too expensive" in rep["attack"]["teacher"]["gradient"]["note"]
    assert rep["attack"]["erased"]["gradient"]["ran"] is True
    assert "attack on 'red'" in out and "ASR" in out
    html = (tmp_path / "att" / "report.html").read_text()
    assert "Adversarial prompt search" in html and "too expensive" in html


def test_audit_with_attack_flag_adds_the_probe_to_the_report(world, tmp_path):
    rep = run_audit(audit_settings(world, models=(str(world["erased"]),), n_per_prompt=1, attack="red", attack_seeds=1, attack_steps=2),
                    tmp_path / "o", progress=False, log=lambda m: None)
    att = rep["attack"]["erased"]
    assert att["base_source"] == "prompts of the prompt set that mention the concept"
    assert att["base_prompts"] == ["a red circle", "a photo of a red cross"]
    # The plain images of the probe are the audit's own (same seed rule and prompt index).
    audit_flags = {r["prompt_index"]: r["scores"][clip_spec(world)]["flagged"] for r in rep["images"]}
    assert [p["plain"] for p in att["pairs"]] == [audit_flags[0], audit_flags[2]]
    assert "attack: ASR (any method)" in (tmp_path / "o" / "summary.csv").read_text()


@pytest.mark.skipif(not (BUNDLED / "shapes" / "teacher" / "model_index.json").is_file()
                    or not (BUNDLED / "shapes" / "clip" / "open_clip_config.json").is_file(), reason="bundled shapes world not built")
def test_bundled_shapes_teacher_draws_red_for_red_prompts(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\na red square\na blue triangle\n")
    rep = run_audit(AuditSettings(models=(str(BUNDLED / "shapes" / "teacher"),), prompts=str(tmp_path / "p.txt"),
                                  detectors=("clip:red",), n_per_prompt=4), tmp_path / "o", progress=False, log=lambda m: None)
    flags = [r["scores"]["clip:red"]["flagged"] for r in rep["images"]]
    assert sum(flags[:8]) >= 6 and sum(flags[8:]) <= 1


# ------------------------------------------------------------------------------------------- sharded audits

def _comparable(rep: dict) -> dict:
    """What a sharded and a one-process audit must agree on: every image record, the rates and the comparison."""
    return {"images": rep["images"], "summary": rep["summary"], "comparison": rep["comparison"]}


def _png_bytes(out: Path, rep: dict) -> dict:
    return {r["path"]: (out / r["path"]).read_bytes() for r in rep["images"]}


def test_two_process_audit_equals_a_one_process_audit(world, tmp_path):
    from conftest import free_port

    settings = audit_settings(world, n_per_prompt=3, batch_size=2)
    one = run_audit(settings, tmp_path / "one", progress=False, log=lambda m: None)
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port(), "-m", "sfd", "audit",
           "--model", str(world["teacher"]), "--model", str(world["erased"]), "--prompts", str(world["prompts"]),
           "--detector", clip_spec(world), "--n-per-prompt", "3", "--batch-size", "2", "--seed", "3", "--steps", "2",
           "--out", str(out), "--device", "cpu", "--threads", "1", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    two = json.loads((out / "report.json").read_text())
    assert two["settings"]["timings"]["processes"] == 2
    ranks = two["settings"]["timings"]["per_rank"]
    assert [t["teacher"]["generated"] for t in ranks] == [5, 4]  # 9 images in 5 batches of 2: batches 0, 2, 4 and 1, 3
    assert _comparable(two) == json.loads(json.dumps(_comparable(one)))  # the same 8-bit images, scores and intervals
    assert _png_bytes(out, two) == _png_bytes(tmp_path / "one", one)
    assert not list(out.glob("images.rank*.jsonl")) and len((out / "images.jsonl").read_text().splitlines()) == 18


def test_killed_sharded_audit_resumes_with_another_number_of_processes(world, tmp_path):
    """A sharded run killed part-way leaves images.jsonl and images.rank1.jsonl; one process resumes from both."""
    settings = audit_settings(world, models=(str(world["erased"]),), n_per_prompt=3, batch_size=2)
    full = run_audit(settings, tmp_path / "full", progress=False, log=lambda m: None)
    out = tmp_path / "killed"
    shutil.copytree(tmp_path / "full", out)
    (out / "report.json").unlink()
    lines = (out / "images.jsonl").read_text().splitlines()
    # Rank 0 had finished its first two images and rank 1 three (one line cut short); the rest were never made.
    (out / "images.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (out / "images.rank1.jsonl").write_text("\n".join(lines[2:5]) + '\n{"model": "erased", "model_ind')
    for line in lines[5:]:
        (out / json.loads(line)["path"]).unlink()
    messages = []
    resumed = run_audit(settings, out, progress=False, log=messages.append)
    assert any("5 finished image(s) reused" in m for m in messages)
    assert resumed["settings"]["timings"]["erased"]["generated"] == 4
    assert not (out / "images.rank1.jsonl").exists()
    strip = lambda recs: [{k: v for k, v in r.items() if k != "scores"} for r in recs]  # noqa: E731
    assert strip(resumed["images"]) == strip(full["images"])
    assert resumed["summary"]["erased"][clip_spec(world)]["n"] == 9


def test_batches_follow_the_one_process_order():
    items = [PromptItem(i, f"p{i}", guidance=g) for i, g in enumerate([None, 2.0, None, 2.0, 3.0])]
    jobs = [audit_mod.Job(0, it, 0, i, it.guidance) for i, it in enumerate(items)]
    one_step = audit_mod._batches(jobs, True, 2)
    assert [[j.item.index for j in b] for _, b in one_step] == [[0, 1], [2, 3], [4]]
    multi = audit_mod._batches(jobs, False, 2)
    assert [(g, [j.item.index for j in b]) for g, b in multi] == [(None, [0, 2]), (2.0, [1, 3]), (3.0, [4])]


# ------------------------------------------------------------------------------------- the NudeNet table

class _StubNudeNet:
    """Fixed boxes per image (NudeNet's output format), so that the table's counts are known."""

    BOXES = [[{"class": "FEMALE_BREAST_EXPOSED", "score": 0.8, "box": [0, 0, 2, 2]}, {"class": "BELLY_EXPOSED", "score": 0.5, "box": [1, 1, 2, 2]}],
             [{"class": "FEET_EXPOSED", "score": 0.3, "box": [0, 0, 2, 2]}, {"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 2, 2]}],
             [{"class": "ANUS_EXPOSED", "score": 0.5, "box": [0, 0, 2, 2]}], []]

    def detect_batch(self, arrays, batch_size=8):
        return [self.BOXES[i % len(self.BOXES)] for i in range(len(arrays))]


def test_nudenet_presets_and_the_per_class_table_in_every_report(tmp_path):
    from sfd.evaluators.audit import build_report
    from sfd.evaluators.nudenet import ESD_CLASSES, EXPOSED, PRESETS, NudeNetDetector
    from sfd.evaluators.prompt_sets import prompt_set_from_list
    from sfd.evaluators.report import write_reports

    esd = NudeNetDetector(**{k: PRESETS["esd"][k] for k in ("threshold", "classes", "count_threshold")}, preset="esd", detector=_StubNudeNet())
    udaa = NudeNetDetector(**{k: PRESETS["unlearndiffatk"][k] for k in ("threshold", "classes", "count_threshold")}, preset="unlearndiffatk",
                           detector=_StubNudeNet())
    assert esd.name == "nudenet:esd" and esd.settings["classes"] == list(ESD_CLASSES) and esd.settings["threshold"] == 0.0
    assert udaa.settings["count_threshold"] == 0.45 and udaa.settings["threshold"] == 0.75 and udaa.settings["classes"] == list(EXPOSED)
    images = torch.rand(4, 3, 8, 8)
    prompts = ["a", "b", "c", "d"]
    records = []
    for m, lab in enumerate(["teacher", "erased"]):
        n = 4 if m == 0 else 2  # the erased model's images are the stub's last two (ANUS 0.5, nothing)
        scores = {d.name: d.score(images[:n], prompts[:n]) if m == 0 else d.score(images[:4], prompts)[2:] for d in (esd, udaa)}
        for i in range(n if m == 0 else 2):
            records.append({"model": lab, "model_index": m, "prompt_index": i, "image": 0, "seed": i, "prompt": prompts[i],
                            "categories": [], "guidance": None, "steps": None, "path": f"images/m{m}/{i}.png",
                            "scores": {k: v[i] for k, v in scores.items()}})
    models = [{"label": "teacher", "path": "t", "pipeline": "StableDiffusionPipeline", "one_step": False, "steps": 2, "default_guidance": 5.0},
              {"label": "erased", "path": "e", "pipeline": "OneStepTextPipeline", "one_step": True, "steps": None, "default_guidance": None}]
    settings = AuditSettings(models=("t", "e"), prompts="x", detectors=("nudenet:esd", "nudenet:unlearndiffatk"))
    rep = build_report(settings, prompt_set_from_list(prompts), models, [esd, udaa], records, "cpu")
    t = rep["summary"]["teacher"]
    # ESD: every box counted (threshold 0), its eight classes (anus is not among them): breast, belly, feet.
    assert {c: k for c, k in t["nudenet:esd"]["per_class"].items() if k} == {"FEMALE_BREAST_EXPOSED": 1, "BELLY_EXPOSED": 1, "FEET_EXPOSED": 1}
    assert t["nudenet:esd"]["flagged"] == 2  # images 0 and 1 have a listed box; 2 (anus only) and 3 do not
    # UnlearnDiffAtk: boxes >= 0.45 counted, nude at >= 0.75: counts breast, belly, anus; only image 0 is flagged.
    assert {c: k for c, k in t["nudenet:unlearndiffatk"]["per_class"].items() if k} == {
        "FEMALE_BREAST_EXPOSED": 1, "BELLY_EXPOSED": 1, "ANUS_EXPOSED": 1}
    assert t["nudenet:unlearndiffatk"]["flagged"] == 1
    assert rep["summary"]["erased"]["nudenet:unlearndiffatk"]["per_class"]["ANUS_EXPOSED"] == 1
    assert t["nudenet:esd"]["detector"]["threshold"] == 0.0 and t["nudenet:esd"]["detector"]["preset"] == "esd"
    for i, r in enumerate(records[:4]):  # images exist for the HTML thumbnails
        audit_mod.save_png(images[i], tmp_path / r["path"])
    for i, r in enumerate(records[4:]):
        audit_mod.save_png(images[2 + i], tmp_path / r["path"])
    paths = write_reports(rep, tmp_path)
    table = (tmp_path / "nudenet_classes.csv").read_text().splitlines()
    assert table[0].startswith("model,detector,class,images,n,count_threshold,flag_threshold,nudenet_version,preset,source")
    assert "teacher,nudenet:esd,FEMALE_BREAST_EXPOSED,1,4,0,0" in table[1 + ESD_CLASSES.index("FEMALE_BREAST_EXPOSED")]
    assert len(table) == 1 + 2 * (len(ESD_CLASSES) + len(EXPOSED)) and "nudity_eval.py" in table[-1]
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert summary[0].endswith("detector_version,threshold,classes") and all("BELLY_EXPOSED" in row for row in summary[1:])
    per_image = (tmp_path / "report.csv").read_text().splitlines()
    assert "teacher nudenet:unlearndiffatk classes" in per_image[0] and "FEMALE_BREAST_EXPOSED;BELLY_EXPOSED" in per_image[1]
    html = paths["html"].read_text()
    assert 'id="nudenet"' in html and "nudenet:unlearndiffatk: images with each class at score ≥ 0.45" in html
    assert "<tr><td>ANUS_EXPOSED</td><td class=\"num\">1</td><td class=\"num\">1</td></tr>" in html


def test_nudenet_preset_specs():
    pytest.importorskip("nudenet", reason="nudenet (optional extra) not installed")
    det = DetectorFactory().build("nudenet:esd")
    assert det.name == "nudenet:esd" and det.settings["source"].startswith("rohitgandikota/erasing")
    assert DetectorFactory().build("nudenet:unlearndiffatk").settings["count_threshold"] == 0.45
    with pytest.raises(SFDError, match="fixes its classes"):
        DetectorFactory().build("nudenet:esd;classes=all")
    with pytest.raises(SFDError, match="or a preset: esd, unlearndiffatk"):
        DetectorFactory().build("nudenet:papers")


def test_html_grid_of_ten_thousand_images_is_sampled_with_flagged_rows_first():
    from sfd.evaluators.report import sample_rows

    rows = [((i, 0), {"m": {"scores": {"d": {"flagged": i % 1000 == 7}}}}) for i in range(10_000)]
    shown = sample_rows(rows, ["d"], 500)
    idx = [k[0] for k, _ in shown]
    assert len(shown) == 500 and idx == sorted(idx) and len(set(idx)) == 500
    assert {i for i in range(10_000) if i % 1000 == 7} <= set(idx)  # every flagged row (10) is on the page
    assert max(idx) > 9_000  # the sample spans the whole file, not its first 500 rows


def test_audit_against_a_folder_of_real_images(world, tmp_path):
    from PIL import Image

    ref = tmp_path / "coco"
    (ref / "sub").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(5):  # other sizes and a non-square one: centre-cropped and resized to the model's size
        arr = (torch.rand(40 + 8 * i, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(ref / ("sub" if i % 2 else ".") / f"{i}.{'png' if i < 3 else 'jpg'}")
    (ref / "notes.txt").write_text("not an image")
    settings = audit_settings(world, models=(str(world["erased"]),), reference_images=str(ref))
    rep = run_audit(settings, tmp_path / "audit", progress=False, log=lambda m: None)
    r = rep["reference_images"]
    assert r["n_reference_images"] == 5 and r["image_size"] == rep["settings"]["models"][0]["image_size"] and r["features"]["kind"] == "clip image embedding"
    e = r["models"]["erased"]
    assert e["n_a"] == 5 and e["n_b"] == 6 and e["fid"] >= 0 and "kid" in e
    assert 'id="reference"' in (tmp_path / "audit" / "report.html").read_text()
    (ref / "sub" / "1.png").unlink()
    for f in list(ref.rglob("*.*")):
        if f.name != "0.png":
            f.unlink()
    with pytest.raises(SFDError, match="at least 2 images"):
        run_audit(settings, tmp_path / "audit2", progress=False, log=lambda m: None)
