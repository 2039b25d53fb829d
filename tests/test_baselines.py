"""ESD and UCE baselines (`sfd erase --method esd-x|esd-u|uce`): the closed form, outputs that reload and sample, bad inputs."""

import json
from dataclasses import replace

import pytest
import torch

from sfd.core.baselines.esd import esd_parameters
from sfd.core.baselines.uce import UCEConfig, edit_weight
from test_cli_class import assert_one_line_error, run_cli


def test_uce_closed_form_maps_forget_inputs_to_guide_outputs_and_keeps_preserved_ones():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 8, generator=g)
    basis = torch.linalg.qr(torch.randn(8, 8, generator=g))[0]
    forget, preserve = basis[:, :2].T, basis[:, 2:6].T  # orthogonal subspaces: both constraints can hold exactly
    guide = torch.randn(2, 8, generator=g)
    new = edit_weight(w, forget, guide, preserve, UCEConfig(lamb=1e-6)).float()
    assert torch.allclose(forget @ new.T, guide @ w.T, atol=1e-3)  # W' c_i = W c'_i
    assert torch.allclose(preserve @ new.T, preserve @ w.T, atol=1e-3)  # W' c_j = W c_j
    assert not torch.allclose(new, w, atol=1e-2)


def test_esd_x_trains_cross_attention_and_esd_u_the_rest_as_the_official_noxattn(tiny_sd_dir):
    from sfd.core.baselines.esd import ESD_U_SKIPPED
    from sfd.core.families import load_model

    _, pipe = load_model(str(tiny_sd_dir))
    x = {id(p) for p in esd_parameters(pipe.unet, "x")}
    u = {id(p) for p in esd_parameters(pipe.unet, "u")}
    names = {id(p): n for n, p in pipe.unet.named_parameters()}
    skipped = {i for i, n in names.items() if n.startswith(ESD_U_SKIPPED)}
    assert x and u and skipped and not x & u and not (x | u) & skipped and len(x | u | skipped) == len(names)
    assert all("attn2" in names[i] for i in x) and not any("attn2" in names[i] for i in u | skipped)
    assert {names[i].split(".")[0] for i in skipped} == {"time_embedding", "conv_norm_out", "conv_out"}


def test_esd_and_uce_outputs_reload_and_sample(tiny_sd_dir, tmp_path, capsys):
    from sfd.core.families import load_model

    before = load_model(str(tiny_sd_dir))[1].unet.state_dict()
    for method, extra in (("uce", []), ("esd-x", ["--steps", "2"]), ("esd-u", ["--steps", "2"])):
        out = tmp_path / method
        code, stdout, err = run_cli(capsys, "erase", "--model", str(tiny_sd_dir), "--out", str(out), "--forget", "cat",
                                    "--override", "dog", "--method", method, "--quiet", *extra)
        assert code == 0, err
        assert f"with {method}" in stdout
        summary = json.loads((out / "sfd_config.json").read_text())
        assert summary["method"] == method and summary["concepts"]["forget"] == ["cat"]
        family, pipe = load_model(str(out))
        assert type(pipe).__name__ == "StableDiffusionPipeline" and not family.is_one_step(pipe)
        changed = [k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, before[k])]
        assert changed, method
        if method == "esd-x":
            assert all("attn2" in k for k in changed)
        images = family.sample(pipe, ["a photo of a cat", "a dog"], [torch.Generator().manual_seed(i) for i in range(2)], steps=2,
                               guidance=3.0)
        assert images.shape[0] == 2 and torch.isfinite(images).all()
        card = (out / "README.md").read_text()  # Hub metadata first (a YAML block), then the title
        assert card.startswith("---\n") and "\n# cat erased with" in card


def test_baseline_bad_inputs_give_one_line(tiny_sd_dir, tiny_teacher_dir, tmp_path, capsys):
    base = ["erase", "--model", str(tiny_sd_dir), "--out", str(tmp_path / "x"), "--forget", "cat", "--override", "dog"]
    code, _, err = run_cli(capsys, *base, "--method", "uce", "--steps", "3")
    assert_one_line_error(code, err, "--steps does not apply to --method uce")
    code, _, err = run_cli(capsys, *base, "--method", "esd-x", "--lora")
    assert_one_line_error(code, err, "--lora applies to --method sfd")
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_sd_dir), "--out", str(tmp_path / "y"), "--forget", "cat",
                           "--method", "uce")
    assert_one_line_error(code, err, "needs an --override")
    code, _, err = run_cli(capsys, "erase", "--model", str(tiny_teacher_dir), "--out", str(tmp_path / "z"), "--forget", "1",
                           "--override", "2", "--method", "esd-u")
    assert_one_line_error(code, err, "erases text concepts")


@pytest.mark.parametrize("method, field, values, bad, message", [
    ("esd-x", "prompts", ("concept", "captions"), "words", "'concept' or 'captions'"),
    ("esd-u", "lr_schedule", ("constant", "cosine"), "linear", "'constant' or 'cosine'"),
])
def test_each_esd_option_changes_the_edit_and_a_bad_value_is_one_line(tiny_sd_dir, tmp_path, method, field, values, bad, message):
    """ESDConfig.prompts: "concept" trains on the concept text alone (the ESD scripts' --prompt), "captions" on the
    prompts naming it. ESDConfig.lr_schedule: "cosine" anneals the rate (the first step as "constant", the second at
    half the rate). Each pair gives different edits from the same seed, is recorded, and a bad value is one line."""
    from sfd.core.baselines import run_baseline
    from sfd.core.baselines.esd import ESDConfig
    from sfd.kernel.errors import SFDError
    from sfd.core.families import load_model

    weights = {}
    for value in values:
        settings = ESDConfig(steps=2, lr=1e-3, sampler_steps=2, **{field: value})
        s = run_baseline(method, str(tiny_sd_dir), str(tmp_path / value), ["cat"], "dog", settings=settings, progress=False)
        assert s["settings"][field] == value
        weights[value] = load_model(str(tmp_path / value))[1].unet.state_dict()
    first, second = (weights[v] for v in values)
    assert any(not torch.equal(v, second[k]) for k, v in first.items())
    with pytest.raises(SFDError) as e:
        ESDConfig(**{field: bad}).validate()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_shapes_worlds_esd_u_preset_follows_the_kind_of_concept(tiny_sd_dir):
    """On the shapes world ESD-u erases a colour with a harder push (eta) than a shape (sfd/core/config.py records why);
    a mix of kinds or a word outside the world takes the shape's preset, ESD-x has one preset, and a model that is
    not a world keeps the paper's settings."""
    from sfd.core.baselines import default_settings
    from sfd.core.baselines.esd import ESDConfig
    from sfd.core.families import family_for
    from sfd.core.models import checkpoints_dir
    from sfd.core.worlds import concept_kind

    teacher = str(checkpoints_dir() / "shapes" / "teacher")
    family = family_for(teacher)
    kinds = (["red"], ["circle"], ["red", "circle"], ["dog"])
    colour, shape, mixed, other = (default_settings("esd-u", family, teacher, c) for c in kinds)
    assert colour.negative_guidance > shape.negative_guidance and colour == replace(shape, negative_guidance=colour.negative_guidance)
    assert mixed == shape == other
    assert default_settings("esd-x", family, teacher, ["red"]) == default_settings("esd-x", family, teacher, ["circle"])
    assert default_settings("esd-u", family_for(str(tiny_sd_dir)), str(tiny_sd_dir), ["red"]) == ESDConfig()
    assert [concept_kind("shapes", c) for c in (["red", "blue"], ["cross"], ["red", "cross"], [])] == ["colour", "shape", None, None]
    assert concept_kind(None, ["red"]) is None
