"""`sfd demo` driven through gradio_client on tiny random stand-in models (offline, CPU, one thread).

The app runs in-process on a free port on 127.0.0.1: a tiny Stable Diffusion teacher and a one-step "erased"
model (its sfd_config.json names 'red'), a tiny CLIP, and a tiny class-conditional teacher, its one-step
"erased" model and a judge. The teachers stand for the bundled checkpoints (models/checkpoints/), the erased
models for the user's runs (models/runs/); the shapes run is the newer one. Generation on both models returns images, times and scores; bad inputs return a
message in the status output, never an exception.
"""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from sfd.kernel.errors import SFDError  # noqa: E402

CLASS_NAMES = ["zero", "one", "two", "three"]
TEXT_ARGS = dict(negative_prompt="", class_name=None, seed=1, steps=2, guidance=4.0, nudenet=False, concepts="")


def build_demo_world(root: Path) -> dict:
    """Tiny random stand-ins of the bundled worlds, saved as folders (a few seconds on a CPU)."""
    from conftest import build_tiny_sd, tiny_class_unet
    from diffusers import HeunDiscreteScheduler

    from sfd.evaluators.classifier import ConvJudge, JudgeConfig
    from sfd.evaluators.clip import ClipEvaluator
    from sfd.pipelines import ClassConditionalPipeline, OneStepClassPipeline, OneStepTextPipeline
    from sfd.commands.worlds import shapes
    from sfd.core.worlds.digits import teacher_scheduler_config

    models = root / "models"
    sd = build_tiny_sd()
    teacher = models / "checkpoints" / "shapes" / "teacher"
    sd.save_pretrained(teacher, safe_serialization=True)
    meta = shapes.world_meta(num_inference_steps=2, guidance_scale=4.0)
    (teacher / "sfd_world.json").write_text(json.dumps(meta))
    one = OneStepTextPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet, scheduler=sd.scheduler, t_init=625)
    erased = models / "runs" / "shapes-no-red"
    one.save_pretrained(erased, safe_serialization=True)
    (erased / "sfd_world.json").write_text(json.dumps({**meta, "base_model": str(teacher)}))  # as `sfd erase` writes it
    (erased / "sfd_config.json").write_text(json.dumps({"base_model": str(teacher), "concepts": {"forget": ["red"], "override": "blue"}}))

    sched = HeunDiscreteScheduler(**teacher_scheduler_config(), use_karras_sigmas=True)
    unet = tiny_class_unet()
    dteacher = models / "checkpoints" / "digits" / "teacher"
    ClassConditionalPipeline(unet=unet, scheduler=sched, class_names=CLASS_NAMES, default_guidance_scale=1.0,
                             default_num_inference_steps=2).save_pretrained(dteacher, safe_serialization=True)
    derased = models / "runs" / "digits-no-one"
    OneStepClassPipeline(unet=unet, scheduler=sched, t_init=440, class_names=CLASS_NAMES).save_pretrained(derased, safe_serialization=True)
    concepts = {"forget": ["one"], "forget_ids": [1], "override": "random", "override_chosen": "one -> seven"}
    (derased / "sfd_config.json").write_text(json.dumps({"base_model": str(dteacher), "concepts": concepts}))

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    ClipEvaluator.from_config(cfg, shapes.CLIP_MEAN, shapes.CLIP_STD, seed=0).save_pretrained(root / "clip", dtype=torch.float32)
    torch.manual_seed(0)
    ConvJudge(JudgeConfig(num_classes=4, class_names=tuple(CLASS_NAMES))).save_pretrained(root / "judge")
    make_newest(erased, derased)
    return {"root": root, "models": models, "teacher": teacher, "erased": erased, "digits_teacher": dteacher,
            "digits_erased": derased, "clip": root / "clip", "judge": root / "judge"}


def make_newest(newest: Path, *others: Path) -> None:
    """Date the models' sfd_config.json (what the demo orders runs by): `newest` an hour after the others."""
    now = time.time()
    for k, folder in enumerate(others):
        os.utime(folder / "sfd_config.json", (now - 7200 + k, now - 7200 + k))
    os.utime(newest / "sfd_config.json", (now - 3600, now - 3600))


def demo_config(world: dict, **kw):
    from sfd.app.demo import DemoConfig

    defaults = dict(roots=(str(world["models"]),), checkpoints=str(world["models"] / "checkpoints"), clip=str(world["clip"]),
                    judge=str(world["judge"]), work_dir=str(world["root"] / "work"), preload=False)
    return DemoConfig(**{**defaults, **kw})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_demo_world(tmp_path_factory.mktemp("demo_world"))
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def served(world):
    """The demo served in-process on a free port; (app, gradio_client.Client)."""
    from gradio_client import Client

    from sfd.app.demo import launch

    demo, app, url = launch(demo_config(world), host="127.0.0.1", port=0, block=False, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    client = Client(url, verbose=False)
    yield app, client
    client.close() if hasattr(client, "close") else None
    demo.close()


def _same_path(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def generate(client, base, cmp, prompt="a red circle", **kw):
    a = {**TEXT_ARGS, **kw}
    return client.predict(str(base), str(cmp), prompt, a["negative_prompt"], a["class_name"], a["seed"], a["steps"], a["guidance"],
                          a["nudenet"], a["concepts"], api_name="/generate")


# ------------------------------------------------------------------------------------------ no server

def test_catalog_finds_models_default_pair_and_erase_hint(world):
    from sfd.app import catalog

    models, problems = catalog.scan([world["models"]], [str(world["root"] / "missing")])
    kinds = {Path(m.path).parts[-2:]: (m.kind, m.one_step, m.forget) for m in models}
    assert kinds == {("shapes", "teacher"): ("text", False, ()), ("runs", "shapes-no-red"): ("text", True, ("red",)),
                     ("digits", "teacher"): ("class", False, ()), ("runs", "digits-no-one"): ("class", True, ("one",))}
    assert len(problems) == 1 and "does not exist" in problems[0]
    base, cmp = catalog.default_pair(models)
    assert Path(base.path) == Path(catalog.display_path(world["teacher"])) and Path(cmp.path).name == "shapes-no-red"
    text_only = [m for m in models if m.kind == "text" and not m.one_step]
    assert catalog.default_pair(text_only) == (text_only[0], None)
    # after `sfd quickstart`: its erased model (runs/quickstart) beside the teacher it came from, whatever else exists
    quick = world["root"] / "qs" / "runs" / "quickstart"
    shutil.copytree(world["digits_erased"], quick)
    cfg = json.loads((quick / "sfd_config.json").read_text())
    assert _same_path(cfg["base_model"], world["digits_teacher"])
    qbase, qcmp = catalog.default_pair([*models, catalog.describe_model(quick)])
    assert Path(qcmp.path).parts[-2:] == ("runs", "quickstart") and _same_path(qbase.path, world["digits_teacher"])
    assert catalog.erase_command(None) == "sfd erase --model checkpoints/shapes/teacher --forget red --override blue --out runs/shapes-no-red"
    assert catalog.describe_model(world["digits_erased"]).override == "random: one -> seven"
    assert catalog.describe_model(world["erased"]).override == "blue"
    dig = catalog.describe_model(world["digits_teacher"])
    assert dig.class_names == tuple(CLASS_NAMES) and dig.default_steps == 2 and "--forget three" in catalog.erase_command(dig)
    forgotten, retained = catalog.example_prompts(cmp)
    assert forgotten[0] == "a red circle" and all("red" in p for p in forgotten) and not any("red" in p for p in retained)
    assert len(retained) == 4  # one per other colour of the world (from its sfd_world.json)
    generic = catalog.example_prompts(catalog.ModelEntry("x", "OneStepTextPipeline", "text", True, forget=("Van Gogh",)))
    assert "a painting of Van Gogh" in generic[0]
    with pytest.raises(SFDError, match="not a diffusers pipeline folder"):
        catalog.describe_model(world["clip"])


def test_demo_opens_on_the_newest_run_beside_its_own_teacher(world, tmp_path):
    from sfd.app import catalog
    from sfd.app.demo import BUNDLED, YOURS, DemoApp

    ckpt = world["models"] / "checkpoints"
    models, _ = catalog.scan([world["models"]])
    pair = lambda ms: tuple(Path(m.path).name if m else None for m in catalog.newest_pair(ms, ckpt))  # noqa: E731
    assert pair(models) == ("teacher", "shapes-no-red") and _same_path(catalog.newest_pair(models, ckpt)[0].path, world["teacher"])
    yours, bundled = catalog.split_bundled(models, ckpt)
    assert [Path(m.path).name for m in yours] == ["shapes-no-red", "digits-no-one"]  # newest first
    assert {Path(m.path).parent.name for m in bundled} == {"shapes", "digits"}
    make_newest(world["digits_erased"], world["erased"])  # e.g. `make quickstart` after a shapes erase
    try:
        models, _ = catalog.scan([world["models"]])
        base, cmp = catalog.newest_pair(models, ckpt)
        assert _same_path(cmp.path, world["digits_erased"]) and _same_path(base.path, world["digits_teacher"])
        app = DemoApp(demo_config(world))
        assert (app.base.path, app.compare.path) == (base.path, cmp.path)
        labels = [label for label, _ in app.choices()]
        assert labels[0].startswith(f"{YOURS} › ") and "digits-no-one" in labels[0] and "shapes-no-red" in labels[1]
        assert all(lab.startswith(f"{BUNDLED} › ") for lab in labels[2:]) and len(labels) == 4
    finally:
        make_newest(world["erased"], world["digits_erased"])
    # A newer run (given with --model) whose teacher is gone is passed over; a --model path is the user's, not bundled.
    orphan = tmp_path / "orphan"
    shutil.copytree(world["erased"], orphan)
    (orphan / "sfd_config.json").write_text(json.dumps({"base_model": str(tmp_path / "gone"), "concepts": {"forget": ["blue"]}}))
    models, problems = catalog.scan([world["models"]], [str(orphan)])
    assert not problems and catalog.split_bundled(models, ckpt)[0][0].path == catalog.display_path(orphan)
    assert pair(models) == ("teacher", "shapes-no-red")
    # No run at all: today's default pair. A run's teacher outside the scanned folders is listed beside it.
    bundled_only = [m for m in models if catalog.is_bundled(m, ckpt)]
    assert catalog.newest_pair(bundled_only, ckpt) == catalog.default_pair(bundled_only)
    runs_only, _ = catalog.scan([world["models"] / "runs"])
    assert {Path(m.path).parent.name for m in runs_only if not m.erased} == {"shapes", "digits"}
    # --compare alone opens beside the teacher it was erased from.
    app = DemoApp(demo_config(world, compare=str(world["digits_erased"])))
    assert _same_path(app.base.path, world["digits_teacher"])


def _initial_inputs(app):
    """The values the page's Generate inputs start with (what gradio passes to the load event)."""
    demo = app.build()
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    deps = demo.config["dependencies"]
    loads = [d for d in deps if any(t[1] == "load" for t in d["targets"])]
    loads += [d for d in deps if loads and d.get("trigger_after") == loads[0]["id"]]  # what runs after it (.then)
    names = ["base-model", "cmp-model", "prompt", "negative", "class", "seed", "steps", "guidance", "nudenet", "concepts"]
    return demo, loads, [by_id[n].value for n in names]


def test_the_page_generates_both_sides_as_it_opens(world):
    from PIL import Image

    from sfd.app.demo import GALLERY_SEEDS, DemoApp

    app = DemoApp(demo_config(world))
    demo, loads, inputs = _initial_inputs(app)
    assert len(loads) == 2  # the first look, then its galleries
    assert inputs[:3] == [app.base.path, app.compare.path, "a red circle"]
    img_a, img_b, info_a, info_b, scores, details, status = app.first_look(*inputs)
    assert isinstance(img_a, Image.Image) and isinstance(img_b, Image.Image) and img_a.size[0] >= 128
    assert status.startswith("Generated as the page opened. Done: same seed 0"), status
    assert "| CLIP: red |" in scores and details["models"]["compare"]["erased"] == ["red"]
    gal_a, gal_b = app.more_seeds(*inputs)
    assert [c for _, c in gal_a] == [c for _, c in gal_b] == [f"seed {s}" for s in range(GALLERY_SEEDS)]
    assert all(isinstance(im, Image.Image) and im.size == img_a.size for im, _ in gal_a + gal_b)
    assert len({im.tobytes() for im, _ in gal_a}) == GALLERY_SEEDS  # three seeds, three different images
    # A class pair opens on the erased class, so the first screen shows the erasure.
    capp = DemoApp(demo_config(world, compare=str(world["digits_erased"])))
    _, _, cinputs = _initial_inputs(capp)
    assert cinputs[4] == "one"
    out = capp.first_look(*cinputs)
    assert out[0] is not None and out[1] is not None and "Done" in out[6], out[6]
    assert [len(g) for g in capp.more_seeds(*cinputs)] == [GALLERY_SEEDS, GALLERY_SEEDS]


def test_the_first_look_reports_problems_as_a_status_message(world, tmp_path):
    from sfd.app.demo import DemoApp

    broken = tmp_path / "runs" / "broken"
    shutil.copytree(world["erased"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    os.utime(broken / "sfd_config.json")  # written now: the newest run
    app = DemoApp(demo_config(world, models=(str(broken),)))
    assert _same_path(app.compare.path, broken)  # the newest run, though it cannot load
    _, _, inputs = _initial_inputs(app)
    out = app.first_look(*inputs)
    assert out[1] is None and out[6].startswith("⚠️") and "could not load" in out[6] and "Traceback" not in out[6]
    assert app.more_seeds(*inputs) == ([], [])
    # No erased model yet: nothing is drawn, no error; the hint names the command that makes one.
    only = tmp_path / "only"
    shutil.copytree(world["teacher"], only / "shapes" / "teacher")
    lone = DemoApp(demo_config(world, roots=(str(only),)))
    _, _, inputs = _initial_inputs(lone)
    assert lone.first_look(*inputs) == (None, None, "", "", "", {}, "") and lone.more_seeds(*inputs) == ([], [])


def test_input_checks_give_one_line_messages(world):
    from sfd.app import runtime

    ok = dict(base_path=str(world["teacher"]), compare_path=str(world["erased"]), prompt="a red circle", negative_prompt="",
              class_name=None, seed=0, steps=2, guidance=4.0)
    assert runtime.check_request(**ok).prompt == "a red circle"
    bad = [({"prompt": "   "}, "prompt is empty"), ({"prompt": "x" * 1001}, "at most 1000"), ({"seed": -1}, "seed must be"),
           ({"seed": 2**40}, "seed must be"), ({"seed": 1.5}, "whole number"), ({"seed": None}, "seed is empty"),
           ({"steps": 0}, "steps must be"), ({"steps": 1000}, "steps must be"), ({"guidance": float("nan")}, "guidance"),
           ({"guidance": -1}, "guidance"), ({"base_path": str(world["root"] / "nope")}, "does not exist"),
           ({"compare_path": ""}, "no comparison model"), ({"compare_path": str(world["digits_erased"])}, "same kind"),
           ({"negative_prompt": "y" * 2000}, "negative prompt has")]
    for change, needle in bad:
        with pytest.raises(SFDError, match=needle) as e:
            runtime.check_request(**{**ok, **change})
        assert "\n" not in str(e.value)
    cls = dict(ok, base_path=str(world["digits_teacher"]), compare_path=str(world["digits_erased"]))
    assert runtime.check_request(**{**cls, "class_name": "Three"}).class_index == 3
    with pytest.raises(SFDError, match="unknown class"):
        runtime.check_request(**{**cls, "class_name": "seven"})
    with pytest.raises(SFDError, match="at most 8"):
        runtime.parse_concepts(",".join(f"c{i}" for i in range(9)))


def test_model_cache_loads_once_and_evicts_least_recent(world):
    from sfd.app import catalog, runtime

    cache = runtime.ModelCache("cpu", max_models=2)
    t, e, d = (catalog.describe_model(world[k]) for k in ("teacher", "erased", "digits_teacher"))
    first, loaded = cache.get(t)
    again, loaded_again = cache.get(t)
    assert loaded and not loaded_again and first is again
    cache.get(e)
    cache.get(d)  # evicts the teacher (least recently used)
    assert t not in cache and e in cache and d in cache


def test_importing_sfd_and_the_cli_demo_module_does_not_import_gradio(tmp_path):
    import subprocess
    import sys

    code = ("import sys, sfd, sfd.commands.cli, sfd.commands.cli_demo, sfd.app, sfd.app.catalog, sfd.app.runtime, sfd.app.audit_tab; print('gradio' in sys.modules)\n"
            "import sfd.app.demo; print('torch' in sys.modules)")  # the page is served before torch loads
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1], timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_cli_demo_parser_and_one_line_errors(world, capsys):
    from sfd.commands import cli, cli_demo

    p = cli._Parser(prog="sfd")
    sub = p.add_subparsers(dest="command", required=True, parser_class=cli._Parser)
    cli_demo.add_parsers(sub)
    a = p.parse_args(["demo"])
    assert (a.host, a.port, a.model, a.concurrency) == ("127.0.0.1", 7860, None, 1)
    for argv, needle in [(["demo", "--model", str(world["root"] / "nope")], "does not exist"),
                         (["demo", "--model", str(world["clip"])], "not a diffusers pipeline folder")]:
        assert cli_demo.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("sfd demo: error:") and needle in err and "\n" not in err
    with pytest.raises(SystemExit):
        cli_demo.main(["demo", "--port", "-3"])
    assert "--port must be >= 0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ served

def test_generate_text_models_returns_images_times_and_scores(world, served):
    app, client = served
    img_a, img_b, info_a, info_b, scores, details, status = generate(client, world["teacher"], world["erased"])
    from PIL import Image

    for img in (img_a, img_b):
        with Image.open(img) as im:
            assert im.size[0] >= 128 and im.size == im.size[::-1]
    assert status.startswith("Done") and "2 steps" in info_a and "one step" in info_b and "erased: red" in info_b
    models = details["models"]
    assert models["base"]["seconds"] > 0 and models["compare"]["seconds"] > 0
    assert models["base"]["steps"] == 2 and models["compare"]["steps"] == 1 and models["compare"]["erased"] == ["red"]
    assert set(details["scores"]) == {"CLIP: red", "CLIP score"}
    red = details["scores"]["CLIP: red"]
    for side in ("base", "compare"):
        assert 0 <= red[side]["score"] <= 1 and isinstance(red[side]["flagged"], bool)
    assert "| CLIP: red |" in scores
    # Same inputs, same images: sampling is seeded per request.
    again = generate(client, world["teacher"], world["erased"])
    assert again[5]["scores"] == details["scores"]
    # Extra concepts are scored too; the second call found both models cached (no load time).
    out = generate(client, world["teacher"], world["erased"], concepts="blue, a circle")
    assert {"CLIP: blue", "CLIP: a circle"} <= set(out[5]["scores"]) and out[5]["models"]["base"]["load_seconds"] is None


def test_nudenet_checkbox_adds_its_score(world, served):
    pytest.importorskip("nudenet", reason="nudenet not installed (pip install 'sfd-erase[nudenet]')")
    app, client = served
    out = generate(client, world["teacher"], world["erased"], nudenet=True)
    assert out[6].startswith("Done"), out[6]
    nn = out[5]["scores"]["NudeNet (nudenet:0.45)"]
    for side in ("base", "compare"):
        assert nn[side]["flagged"] is False and 0 <= nn[side]["score"] <= 1  # colour noise shows no body parts


def test_generate_class_models_uses_the_judge(world, served):
    app, client = served
    out = generate(client, world["digits_teacher"], world["digits_erased"], prompt="", class_name="one")
    assert out[0] and out[1] and out[6].startswith("Done"), out[6]
    scores = out[5]["scores"]
    assert set(scores) == {"judge: predicted class", "judge: erased class (one)"}
    assert scores["judge: predicted class"]["base"]["label"] in CLASS_NAMES
    assert out[5]["models"]["compare"]["erased"] == ["one"]


@pytest.mark.parametrize("change, needle", [
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": "a red circle " * 100}, "at most 1000"),
    ({"steps": 0}, "steps must be"),
    ({"steps": 5000}, "steps must be"),
    ({"seed": -5}, "seed must be"),
    ({"seed": 2**33}, "seed must be"),
    ({"guidance": 99}, "guidance must be"),
    ({"cmp": "/no/such/model"}, "does not exist"),
    ({"cmp": ""}, "no comparison model"),
    ({"class_name": "seven", "base": "digits_teacher", "cmp": "digits_erased"}, "unknown class"),
])
def test_bad_inputs_return_a_message_not_an_exception(world, served, change, needle):
    app, client = served
    base = world.get(change.pop("base", "teacher"))
    cmp = change.pop("cmp", world["erased"])
    cmp = world.get(cmp, cmp) if isinstance(cmp, str) else cmp
    prompt = change.pop("prompt", "a red circle")
    out = generate(client, base, cmp, prompt, **change)
    assert out[0] is None and out[1] is None
    assert needle in out[6] and "Traceback" not in out[6] and out[5] == {"error": out[6].strip("⚠️ *")}


def test_a_failing_model_gives_a_short_message(world, served, tmp_path):
    app, client = served
    broken = tmp_path / "broken"
    shutil.copytree(world["erased"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    out = generate(client, world["teacher"], broken)
    assert out[1] is None and "could not load" in out[6] and "Traceback" not in out[6]


def test_audit_tab_runs_a_small_audit_and_reports(world, served):
    app, client = served
    status, summary, gallery, files, report = client.predict(
        str(world["teacher"]), str(world["erased"]), "a red circle\na blue square", None, 1, 0, 2, 4.0, False, "",
        api_name="/audit")
    assert status.startswith("Audit done: 4 images"), status
    assert "clip:red" in summary and "95% interval" in summary and "Difference to" in summary
    assert len(gallery) == 4 and all(Path(g["image"]).is_file() if isinstance(g, dict) else True for g in gallery)
    assert {Path(f).name for f in files} == {"report.html", "report.json", "report.csv", "summary.csv"}
    assert report.startswith("<iframe") and "srcdoc=" in report
    bad = client.predict(str(world["teacher"]), str(world["erased"]), "  \n# only a comment\n", None, 1, 0, 2, 4.0, False, "",
                         api_name="/audit")
    assert bad[0].startswith("⚠️") and "no prompts" in bad[0]
    bad = client.predict(str(world["teacher"]), str(world["erased"]), "a red circle", None, 9, 0, 2, 4.0, False, "", api_name="/audit")
    assert "images per prompt" in bad[0]


def test_audit_tab_reads_an_uploaded_i2p_style_csv(world, served, tmp_path):
    from gradio_client import handle_file

    app, client = served
    csv = tmp_path / "set.csv"
    csv.write_text("prompt,evaluation_seed,evaluation_guidance,categories\na red cross,7,3.0,colour\na purple square,8,3.0,colour\n")
    status, summary, gallery, files, report = client.predict(
        str(world["digits_teacher"]), str(world["digits_erased"]), "", handle_file(str(csv)), 1, 0, 2, 1.0, False, "",
        api_name="/audit")
    assert "each prompt must name a class" in status  # class models take class names, one per line
    status, summary, gallery, files, report = client.predict(
        str(world["teacher"]), str(world["erased"]), "ignored when a file is given", handle_file(str(csv)), 1, 0, 2, 4.0, False,
        "purple", api_name="/audit")
    assert status.startswith("Audit done: 4 images"), status
    assert "clip:purple" in summary and len(gallery) == 4
    rep = json.loads(Path(next(f for f in files if f.endswith("report.json"))).read_text())
    assert {r["seed"] for r in rep["images"]} == {7, 8}  # the file's own seeds (I2P evaluation_seed)
    assert {r["guidance"] for r in rep["images"] if r["model"] == "teacher"} == {3.0}  # and its own guidance
    bad = tmp_path / "set.exe"
    bad.write_text("x")
    out = client.predict(str(world["teacher"]), str(world["erased"]), "", handle_file(str(bad)), 1, 0, 2, 4.0, False, "",
                         api_name="/audit")
    assert out[0].startswith("⚠️") and "not a prompt file" in out[0] and "Traceback" not in out[0]


def test_refresh_finds_a_new_erased_model(world, served):
    app, client = served
    new = world["models"] / "runs" / "late-arrival"
    shutil.copytree(world["erased"], new)
    try:
        base, cmp, hint = client.predict(str(world["teacher"]), str(world["erased"]), api_name="/refresh")
        assert any(Path(m.path).name == "late-arrival" for m in app.models)
        assert "Comparing" in hint
    finally:
        shutil.rmtree(new)
        app.models, _ = app.scan()


def test_hint_names_the_erase_command_when_no_erased_model_exists(world, tmp_path):
    from sfd.app.demo import DemoApp

    only = tmp_path / "only"
    shutil.copytree(world["teacher"], only / "shapes" / "teacher")
    app = DemoApp(demo_config(world, roots=(str(only),)))
    assert app.compare is None
    hint = app.hint(app.base.path, None)
    assert "No erased model yet" in hint and "sfd erase --model" in hint and "--forget red --override blue" in hint
