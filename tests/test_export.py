"""`sfd export`: single-file checkpoints, Kohya LoRA, ComfyUI workflows, A1111 notes and Hub cards, each checked by a
reader that is not ours (diffusers' from_single_file and load_lora_weights, ComfyUI's node definitions, a YAML parser)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import _tiny_text_config, build_tiny_sd, build_tiny_sdxl

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle"


def tiny_sd2():
    """SD 2.x's structure in small: v-prediction, an OpenCLIP-style text encoder (gelu), linear projections."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    pipe = build_tiny_sd("v_prediction")
    torch.manual_seed(11)
    pipe.text_encoder = CLIPTextModel(_tiny_text_config(hidden_act="gelu"))
    torch.manual_seed(12)
    pipe.unet = UNet2DConditionModel(**{**dict(pipe.unet.config), "use_linear_projection": True})
    return pipe


def tiny_sdxl():
    """build_tiny_sdxl with a wider second encoder: diffusers tells SDXL's two encoders apart by their widths."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    pipe = build_tiny_sdxl()
    torch.manual_seed(13)
    pipe.text_encoder_2 = CLIPTextModelWithProjection(_tiny_text_config(hidden_size=48, hidden_act="gelu"))
    torch.manual_seed(14)
    pipe.unet = UNet2DConditionModel(**{**dict(pipe.unet.config), "cross_attention_dim": 80})
    return pipe


BUILDERS = {"sd1": ("sd", build_tiny_sd), "sd2-v": ("sd", tiny_sd2), "sdxl": ("sdxl", tiny_sdxl)}


def _diffusers_read(state: dict, pipe) -> dict:
    """What diffusers' own single-file conversion makes of `state`, per component (text_model. levels dropped)."""
    from diffusers.loaders import single_file_utils as u

    out = {"unet": u.convert_ldm_unet_checkpoint(state, dict(pipe.unet.config)),
           "vae": u.convert_ldm_vae_checkpoint(state, dict(pipe.vae.config))}
    if getattr(pipe, "text_encoder_2", None) is not None:
        out["text_encoder"] = u.convert_ldm_clip_checkpoint(state)
        out["text_encoder_2"] = u.convert_open_clip_checkpoint(pipe.text_encoder_2, state, prefix="conditioner.embedders.1.model.")
    elif u.is_open_clip_model(state):
        out["text_encoder"] = u.convert_open_clip_checkpoint(pipe.text_encoder, state)
    else:
        out["text_encoder"] = u.convert_ldm_clip_checkpoint(state)
    strip = lambda d: {k.removeprefix("text_model.") if not k.startswith("text_projection") else k: v for k, v in d.items()}
    return {c: strip(d) if c.startswith("text") else d for c, d in out.items()}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_every_single_file_key_maps_to_one_diffusers_weight_and_back(kind):
    from sfd.core.export.single_file import from_single_file_state, to_single_file

    family, build = BUILDERS[kind]
    pipe = build()
    state = to_single_file(family, pipe)
    read = _diffusers_read(state, pipe)
    n_weights = 0
    for comp, got in read.items():
        ref = {k.removeprefix("text_model."): v for k, v in getattr(pipe, comp).state_dict().items()}
        assert set(got) == set(ref), (comp, sorted(set(got) ^ set(ref))[:5])
        for k, v in ref.items():
            assert torch.equal(got[k].reshape(v.shape), v), (comp, k)
        n_weights += sum(v.numel() for v in ref.values())
    # Nothing unused: the file holds exactly the pipeline's numbers, each once.
    assert sum(v.numel() for v in state.values()) == n_weights
    if kind == "sd2-v":
        assert any(k.startswith("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight") for k in state)
    back = from_single_file_state(family, pipe, state)  # our reader: the same table the other way
    for comp, got in back.items():
        ref = getattr(pipe, comp).state_dict()
        assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)


def _one_step_folder(teacher, root: Path) -> tuple[Path, Path]:
    """(teacher folder, one-step folder): the teacher's own one-step denoise from sigma(625) as a SiD one-step model."""
    from sfd.core.families import family_for
    from sfd.kernel.generators import OneStepConvention

    t_dir, o_dir = root / "teacher", root / "onestep"
    teacher.save_pretrained(t_dir, safe_serialization=True)
    fam = family_for(str(t_dir))
    loaded = fam.load(str(t_dir))
    fam.one_step_pipeline_from(loaded, fam.network(loaded), OneStepConvention(625)).save_pretrained(o_dir, safe_serialization=True)
    (o_dir / "sfd_config.json").write_text(json.dumps({"stage": "imported", "family": fam.name, "base_model": str(t_dir),
                                                        "concepts": {"forget_prompts": [PROMPT]}}))
    return t_dir, o_dir


def sfd(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sfd", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1"})


def _sfd_sample(folder, n=8):
    """The images `sfd sample --seed 0 --n n` writes (its code path: family.sample with per-image seeds), in [0, 1]."""
    from sfd.core.families import load_model

    fam, pipe = load_model(str(folder))
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    return fam.sample(pipe, [PROMPT] * n, gens).permute(0, 2, 3, 1).numpy()


def _stock_one_step(pipe, sigma: float, size: int, n=8):
    from diffusers import EulerDiscreteScheduler

    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    return pipe([PROMPT] * n, sigmas=[sigma, 0.0], guidance_scale=1.0, height=size, width=size, generator=gens,
                output_type="np").images


def _max_8bit(a, b) -> int:
    return int(np.abs(np.round(a * 255) - np.round(b * 255)).max())


def _sigma(out: Path) -> float:
    wf = json.loads((out / "comfyui_workflow_api.json").read_text())
    return next(n["inputs"]["sigma"] for n in wf.values() if n["class_type"] == "SetFirstSigma")


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_single_file_export_loads_with_from_single_file_and_reproduces_sfd_sample(kind, tmp_path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    family, build = BUILDERS[kind]
    t_dir, o_dir = _one_step_folder(build(), tmp_path)
    r = sfd("export", o_dir, "--format", "single-file", "--out", tmp_path / "export")
    assert r.returncode == 0, r.stderr
    file = tmp_path / "export" / "export.safetensors"
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    extra = {} if family == "sdxl" else {"safety_checker": None}
    stock = cls.from_single_file(str(file), config=str(t_dir), local_files_only=True, **extra)
    size = stock.unet.config.sample_size * stock.vae_scale_factor
    d = _max_8bit(_stock_one_step(stock, _sigma(tmp_path / "export"), size), _sfd_sample(o_dir))
    assert d <= 2, d
    # The UNet alone, for ComfyUI's UNet loader, reads back with the same reader.
    r = sfd("export", o_dir, "--format", "single-file", "--unet-only", "--out", tmp_path / "unet")
    assert r.returncode == 0, r.stderr
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_single_file(str(tmp_path / "unet" / "unet.safetensors"), config=str(t_dir), subfolder="unet")
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), stock.unet.state_dict().values()))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA erase of the shapes world (stage 2 from its bundled full base: the adapter applies to the base)."""
    out = tmp_path_factory.mktemp("shapes") / "no-red-lora"
    r = sfd("erase", "--model", "checkpoints/shapes/teacher", "--forget", "red", "--override", "blue", "--out", out,
            "--steps", "2", "--lora", "--quiet")
    assert r.returncode == 0, r.stderr
    return out


def test_kohya_lora_of_the_shapes_run_loads_on_the_stock_pipeline_and_reproduces_the_merged_folder(lora_run, tmp_path):
    from diffusers import StableDiffusionPipeline

    r = sfd("export", lora_run, "--format", "kohya-lora", "--out", tmp_path / "kohya")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((lora_run / "sfd_config.json").read_text())
    target = cfg["generator_base"] if cfg["roles"]["adapter_applies_to"] == "base" else cfg["base_model"]
    stock = StableDiffusionPipeline.from_pretrained(str(ROOT / target), safety_checker=None)
    stock.load_lora_weights(str(tmp_path / "kohya" / "kohya.safetensors"))
    size = stock.unet.config.sample_size * stock.vae_scale_factor
    d = _max_8bit(_stock_one_step(stock, _sigma(tmp_path / "kohya"), size), _sfd_sample(lora_run))
    assert d <= 2, d
    wf = json.loads((tmp_path / "kohya" / "comfyui_workflow_api.json").read_text())
    assert {"CheckpointLoaderSimple": f"{Path(target).name}.safetensors"}.items() <= \
        {n["class_type"]: n["inputs"].get("ckpt_name") for n in wf.values()}.items()


def test_kohya_keys_carry_a_nonzero_adapter_exactly(tmp_path):
    """A random, clearly non-zero adapter: Kohya file -> diffusers' reader gives the UNet the PEFT adapter gives."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from sfd.core.adapters import lora_config
    from sfd.core.export.lora import kohya_state
    from sfd.core.families import family_named

    pipe = build_tiny_sd()
    targets = family_named("sd").lora_targets()
    pipe.unet.add_adapter(lora_config(4, targets))
    torch.manual_seed(3)
    for n, p in pipe.unet.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.2)
    from peft.utils import get_peft_model_state_dict

    StableDiffusionPipeline.save_lora_weights(str(tmp_path / "lora"), unet_lora_layers=get_peft_model_state_dict(pipe.unet),
                                              safe_serialization=True)
    kohya = kohya_state(tmp_path / "lora" / "pytorch_lora_weights.safetensors")
    assert all(k.startswith("lora_unet_") for k in kohya)
    assert sum(k.endswith(".alpha") for k in kohya) == sum(k.endswith(".lora_down.weight") for k in kohya) > 0
    from safetensors.torch import save_file

    save_file(kohya, str(tmp_path / "k.safetensors"))
    fresh = build_tiny_sd()
    fresh.load_lora_weights(str(tmp_path / "k.safetensors"))
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([500, 500]), torch.randn(2, 77, 32)
    with torch.no_grad():
        want, got, plain = pipe.unet(x, t, c).sample, fresh.unet(x, t, c).sample, build_tiny_sd().unet(x, t, c).sample
    assert (want - plain).abs().max() > 1e-2  # the adapter matters ...
    assert torch.allclose(got, want, atol=1e-5)  # ... and the Kohya file carries all of it
    assert load_file(str(tmp_path / "k.safetensors"))  # a plain safetensors file


# ComfyUI's node definitions, transcribed from its source (Comfy-Org/ComfyUI; the stored files' commits):
#   nodes.py @ 02217e36a45bcbe2dd8fa24187aa5e053d9aea2e (CheckpointLoaderSimple, UNETLoader, LoraLoaderModelOnly,
#     CLIPTextEncode, EmptyLatentImage, VAEDecode, KSampler; SaveImage from its NODE_CLASS_MAPPINGS),
#   comfy_extras/nodes_custom_sampler.py @ be91880bfd0df579cc7ad255df1eec46657b54b6 (SDTurboScheduler, SetFirstSigma,
#     KSamplerSelect, SamplerCustom), comfy_extras/nodes_model_advanced.py @ 691e82787be231880314d980b49b06a8105c5de6
#   (ModelSamplingDiscrete); sampler and scheduler names from comfy/samplers.py KSAMPLER_NAMES / SCHEDULER_NAMES.
# {node: ({input: type or (type, min, max) or [options]}, [output types])}; "FILE" is a file-list combo.
BIG = 0xFFFFFFFFFFFFFFFF
COMFY_NODES = {
    "CheckpointLoaderSimple": ({"ckpt_name": "FILE"}, ["MODEL", "CLIP", "VAE"]),
    "UNETLoader": ({"unet_name": "FILE", "weight_dtype": ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]}, ["MODEL"]),
    "LoraLoaderModelOnly": ({"model": "MODEL", "lora_name": "FILE", "strength_model": ("FLOAT", -100.0, 100.0)}, ["MODEL"]),
    "ModelSamplingDiscrete": ({"model": "MODEL", "sampling": ["eps", "v_prediction", "lcm", "x0", "img_to_img", "img_to_img_flow"],
                               "zsnr": "BOOLEAN"}, ["MODEL"]),
    "CLIPTextEncode": ({"text": "STRING", "clip": "CLIP"}, ["CONDITIONING"]),
    "EmptyLatentImage": ({"width": ("INT", 16, 16384), "height": ("INT", 16, 16384), "batch_size": ("INT", 1, 4096)}, ["LATENT"]),
    "SDTurboScheduler": ({"model": "MODEL", "steps": ("INT", 1, 10), "denoise": ("FLOAT", 0.0, 1.0)}, ["SIGMAS"]),
    "SetFirstSigma": ({"sigmas": "SIGMAS", "sigma": ("FLOAT", 0.0, 20000.0)}, ["SIGMAS"]),
    "KSamplerSelect": ({"sampler_name": ["euler", "euler_ancestral", "heun", "dpm_2", "lms", "dpmpp_2m"]}, ["SAMPLER"]),
    "SamplerCustom": ({"model": "MODEL", "add_noise": "BOOLEAN", "noise_seed": ("INT", 0, BIG), "cfg": ("FLOAT", 0.0, 100.0),
                       "positive": "CONDITIONING", "negative": "CONDITIONING", "sampler": "SAMPLER", "sigmas": "SIGMAS",
                       "latent_image": "LATENT"}, ["LATENT", "LATENT"]),
    "KSampler": ({"model": "MODEL", "seed": ("INT", 0, BIG), "steps": ("INT", 1, 10000), "cfg": ("FLOAT", 0.0, 100.0),
                  "sampler_name": ["euler", "euler_ancestral", "heun", "dpmpp_2m"], "scheduler": ["normal", "karras", "simple"],
                  "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT",
                  "denoise": ("FLOAT", 0.0, 1.0)}, ["LATENT"]),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ["IMAGE"]),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": "STRING"}, []),
}
SCALARS = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool, "FILE": str}


def check_workflow(wf: dict) -> None:
    """Every node is a ComfyUI node with exactly its required inputs; links point at existing outputs of the right
    type; widget values have the type, range and options the node declares."""
    for nid, node in wf.items():
        spec, _ = COMFY_NODES[node["class_type"]]
        assert set(node["inputs"]) == set(spec), (nid, node["class_type"], set(node["inputs"]) ^ set(spec))
        for name, value in node["inputs"].items():
            want = spec[name]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):  # a link [node id, output]
                src = wf[value[0]]
                assert COMFY_NODES[src["class_type"]][1][value[1]] == want, (nid, name)
            elif isinstance(want, list):
                assert value in want, (nid, name, value)
            elif isinstance(want, tuple):
                assert isinstance(value, SCALARS[want[0]]) and not isinstance(value, bool) and want[1] <= value <= want[2], (nid, name)
            else:
                assert want in SCALARS and isinstance(value, SCALARS[want]), (nid, name, value)


def test_workflows_are_valid_comfyui_api_prompts_with_the_one_step_settings():
    from sfd.core.export.samplers import Recipe, a1111_note, comfy_workflow

    one = Recipe(True, 2.501704454, 625, 1, 1.0, "epsilon", 64, PROMPT)
    cases = [({"checkpoint": "m.safetensors"}, one), ({"checkpoint": "t.safetensors", "unet": "u.safetensors"}, one),
             ({"checkpoint": "b.safetensors", "lora": "l.safetensors"}, Recipe(**{**one.__dict__, "prediction_type": "v_prediction"})),
             ({"checkpoint": "m.safetensors"}, Recipe(False, None, None, 25, 7.5, "epsilon", 64, PROMPT))]
    for loader, recipe in cases:
        wf = comfy_workflow(recipe, loader)
        check_workflow(wf)
        kinds = {n["class_type"]: n["inputs"] for n in wf.values()}
        assert kinds["EmptyLatentImage"]["width"] == 512  # 64 latents x ComfyUI's factor 8
        if recipe.one_step:
            assert kinds["SetFirstSigma"]["sigma"] == pytest.approx(2.501704, abs=1e-6)
            assert kinds["SamplerCustom"]["cfg"] == 1.0 and kinds["KSamplerSelect"]["sampler_name"] == "euler"
            assert kinds["SDTurboScheduler"]["steps"] == 1
            note = a1111_note(recipe, "m.safetensors")
            assert "Sampling steps: 1" in note and "CFG Scale: 1" in note and "2.501704" in note and "Euler" in note
        assert ("ModelSamplingDiscrete" in kinds) == (recipe.prediction_type == "v_prediction")
        assert ("UNETLoader" in kinds) == ("unet" in loader) and ("LoraLoaderModelOnly" in kinds) == ("lora" in loader)
    bad = comfy_workflow(one, {"checkpoint": "m.safetensors"})
    bad["8"]["inputs"]["cfg"] = "1"  # SamplerCustom: a string where ComfyUI wants a FLOAT
    with pytest.raises(AssertionError):  # the checker itself can fail
        check_workflow(bad)


def test_bad_requests_are_one_line_naming_what_is_possible(lora_run, tiny_sd_dir, tiny_teacher_dir, tmp_path):
    cases = [
        ((lora_run, "--format", "single-file"), "addition_embed_type"),  # the shapes UNet's pooled-text embedding
        (("checkpoints/shapes/onestep", "--format", "kohya-lora"), "full-mode"),
        ((tiny_teacher_dir, "--format", "single-file"), "--format diffusers"),
        ((tiny_sd_dir, "--format", "single-file", "--workflow", "one-step"), "multi-step"),
        ((lora_run, "--format", "diffusers", "--unet-only"), "--unet-only applies to --format single-file"),
        ((lora_run, "--format", "diffusers", "--out", lora_run / "inside"), "lies inside"),
    ]
    for args, words in cases:
        out = [] if "--out" in args else ["--out", tmp_path / "x"]
        r = sfd("export", *args, *out)
        assert r.returncode == 2 and r.stderr.startswith("sfd export: error: ") and words in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


ABSOLUTE = re.compile(r"(?<![\w:/.~-])/(?:home|tmp|work|root|usr|var|Users|mnt)/")


def check_card(text: str, relation: str) -> dict:
    import yaml

    from sfd.core.export.hub import read_front_matter

    meta = read_front_matter(text)
    assert yaml.safe_load(text.split("---\n")[1]) == meta
    assert {"base_model", "base_model_relation", "library_name", "pipeline_tag", "tags"} <= set(meta)
    assert meta["base_model_relation"] == relation and meta["library_name"] == "diffusers"
    assert not ABSOLUTE.search(text), ABSOLUTE.search(text).group(0)
    return meta


def test_every_export_card_has_hub_metadata_and_no_absolute_path(lora_run, tiny_sd_dir, tmp_path):
    runs = [((lora_run, "--format", "kohya-lora"), "adapter"), ((lora_run, "--format", "diffusers"), "finetune"),
            ((tiny_sd_dir, "--format", "single-file", "--hub-id", "me/tiny"), "finetune")]
    for i, (args, relation) in enumerate(runs):
        out = tmp_path / f"e{i}"
        r = sfd("export", *args, "--out", out)
        assert r.returncode == 0, r.stderr
        text = (out / "README.md").read_text()
        meta = check_card(text, relation)
        assert "huggingface-cli upload" in text and "/" not in meta["base_model"]
    assert "## Use it in ComfyUI" in (tmp_path / "e0" / "README.md").read_text()
    assert "me/tiny" in (tmp_path / "e2" / "README.md").read_text()
    assert (tmp_path / "e1" / "unet" / "diffusion_pytorch_model.safetensors").is_file()  # links resolved into files
    check_card((lora_run / "README.md").read_text(), "finetune")  # the erase's own card: the same conventions
    with pytest.raises(AssertionError):  # an absolute path fails the check
        check_card("\n".join(ABS_CARD), "finetune")


ABS_CARD = ["---", 'base_model: "x"', 'base_model_relation: "finetune"', 'library_name: "diffusers"',
            'pipeline_tag: "text-to-image"', "tags: []", "---", "PATH = '/tmp/run'"]
