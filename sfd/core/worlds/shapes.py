"""The shapes world's data: procedural 32x32 images of one coloured shape, with captions ("a red circle").

It stands in for Stable Diffusion offline (DESIGN.md section 4): a tiny CLIP trained with open_clip is
the evaluator, and a tiny latent text-to-image model (AutoencoderKL + UNet2DConditionModel + CLIPTextModel
+ the real CLIP tokenizer) is saved as a standard `StableDiffusionPipeline` folder, so the erasure code
runs on it exactly as on SD.

This module holds the data (rendering and captions) that the core and the evaluators use. The training of the
world's models (`train_world`) and the evaluation of a teacher are in sfd/commands/worlds/shapes.py.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

IMAGE_SIZE = 32


COLOURS = ("red", "green", "blue", "yellow", "purple")


SHAPES = ("circle", "square", "triangle", "cross")


# Every template names colour then shape with "a" before the colour, so replacing a concept word by
# another is a plain string substitution (what erasure's override prompts do).
TEMPLATES = (
    "a {colour} {shape}",
    "a photo of a {colour} {shape}",
    "a drawing of a {colour} {shape}",
    "a {colour} {shape} on a grey background",
    "a picture of a {colour} {shape}",
    "a simple {colour} {shape}",
)


# Saturated RGB in [0, 1], far apart in hue so a 32-pixel CLIP and a tiny teacher can tell them apart.
RGB = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.13, 0.68, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.12),
    "purple": (0.56, 0.20, 0.76),
}


GREY_RANGE = (0.3, 0.7)  # background level; keeps every colour in contrast with it


SIZE_RANGE = (6.0, 11.0)  # half-extent of a shape in pixels


COLOUR_JITTER = 0.05


SUPERSAMPLE = 4  # anti-aliasing: coverage is averaged over 4x4 sub-pixels


class ShapesBatch(NamedTuple):
    images: torch.Tensor  # (n, 3, 32, 32) float32 in [-1, 1]
    captions: list[str]
    colour_ids: torch.Tensor  # (n,) int64 into COLOURS
    shape_ids: torch.Tensor  # (n,) int64 into SHAPES


def caption(colour: str | int, shape: str | int, template: str | int = 0) -> str:
    """The caption of one image; indices refer to COLOURS, SHAPES and TEMPLATES."""
    colour = COLOURS[colour] if isinstance(colour, int) else colour
    shape = SHAPES[shape] if isinstance(shape, int) else shape
    template = TEMPLATES[template] if isinstance(template, int) else template
    return template.format(colour=colour, shape=shape)


def next_value(concept: str) -> str:
    """The next colour or shape after `concept` (red -> green, circle -> square, ...): the worlds' fixed,
    reproducible override of a benchmark's erase."""
    values = COLOURS if concept in COLOURS else SHAPES
    return values[(values.index(concept) + 1) % len(values)]


def all_prompts(template: int = 0) -> list[tuple[int, int, str]]:
    """(colour id, shape id, prompt) for every colour x shape pair, in a fixed order."""
    return [(c, s, caption(c, s, template)) for c in range(len(COLOURS)) for s in range(len(SHAPES))]


def _coverage(shape_ids: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Fraction of each pixel covered by the shape, (n, 1, 32, 32), from inside-tests on a finer grid."""
    fine = IMAGE_SIZE * SUPERSAMPLE
    u = (torch.arange(fine, dtype=torch.float32) + 0.5) / SUPERSAMPLE
    x = u.view(1, 1, fine) - cx.view(-1, 1, 1)
    y = u.view(1, fine, 1) - cy.view(-1, 1, 1)
    r = size.view(-1, 1, 1)
    circle = x**2 + y**2 <= r**2
    square = (x.abs() <= 0.85 * r) & (y.abs() <= 0.85 * r)
    # Upright equilateral triangle, circumradius 1.2 r centred on (cx, cy): depth below the apex d in
    # [0, 1.5 R] and half-width d / sqrt(3) at that depth.
    big_r = 1.2 * r
    depth = y + big_r
    triangle = (depth >= 0) & (depth <= 1.5 * big_r) & (x.abs() <= depth / math.sqrt(3))
    arm = 0.35 * r
    cross = ((x.abs() <= r) & (y.abs() <= arm)) | ((y.abs() <= r) & (x.abs() <= arm))
    masks = torch.stack([circle, square, triangle, cross], 1).float()  # order of SHAPES
    mask = masks[torch.arange(len(shape_ids)), shape_ids].unsqueeze(1)
    return F.avg_pool2d(mask, SUPERSAMPLE)


def render(
    n: int,
    generator: torch.Generator,
    colour_ids: torch.Tensor | Sequence[int] | None = None,
    shape_ids: torch.Tensor | Sequence[int] | None = None,
    template_ids: torch.Tensor | Sequence[int] | None = None,
) -> ShapesBatch:
    """n random images with captions; colours, shapes and templates are uniform unless given.

    Everything random comes from `generator`, so the same seed gives the same batch.
    """
    def ids(given, k: int) -> torch.Tensor:
        if given is None:
            return torch.randint(k, (n,), generator=generator)
        t = torch.as_tensor(given, dtype=torch.long).reshape(-1)
        if t.numel() != n or t.min() < 0 or t.max() >= k:
            raise ValueError(f"expected {n} ids in [0, {k - 1}], got {t.tolist()}")
        return t

    colour_ids, shape_ids, template_ids = ids(colour_ids, len(COLOURS)), ids(shape_ids, len(SHAPES)), ids(template_ids, len(TEMPLATES))
    size = SIZE_RANGE[0] + (SIZE_RANGE[1] - SIZE_RANGE[0]) * torch.rand(n, generator=generator)
    margin = 1.2 * size + 1.0  # the triangle's apex reaches 1.2 r from the centre, the widest extent
    cx = margin + (IMAGE_SIZE - 2 * margin) * torch.rand(n, generator=generator)
    cy = margin + (IMAGE_SIZE - 2 * margin) * torch.rand(n, generator=generator)
    grey = GREY_RANGE[0] + (GREY_RANGE[1] - GREY_RANGE[0]) * torch.rand(n, generator=generator)
    palette = torch.tensor([RGB[c] for c in COLOURS])
    jitter = COLOUR_JITTER * (2 * torch.rand(n, 3, generator=generator) - 1)
    fg = (palette[colour_ids] + jitter).clamp(0, 1).view(n, 3, 1, 1)
    bg = grey.view(n, 1, 1, 1)
    cover = _coverage(shape_ids, cx, cy, size)
    images = (bg * (1 - cover) + fg * cover) * 2 - 1
    captions = [caption(int(c), int(s), int(t)) for c, s, t in zip(colour_ids, shape_ids, template_ids)]
    return ShapesBatch(images, captions, colour_ids, shape_ids)


COLOUR_PROMPT = "a photo of a {} shape"  # zero-shot colour: one label per colour


SHAPE_PROMPT = "a photo of a {}"  # zero-shot shape: one label per shape


# CLIP also sees captions naming one attribute, so that the prompts above mean something to it.
COLOUR_ONLY_TEMPLATES = ("a {colour} shape", "a photo of a {colour} shape", "a drawing of a {colour} shape")


SHAPE_ONLY_TEMPLATES = ("a {shape}", "a photo of a {shape}", "a drawing of a {shape}")


DEFAULT_NUM_INFERENCE_STEPS = 20


DEFAULT_GUIDANCE_SCALE = 5.0


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (what evaluators take)."""
    return (images.float() / 2 + 0.5).clamp(0, 1)


def world_meta(num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS, guidance_scale: float = DEFAULT_GUIDANCE_SCALE, **extra) -> dict:
    """The sfd_world.json of a shapes teacher: what the CLI and evaluators need to know about the world."""
    return {"world": "shapes", "image_size": IMAGE_SIZE, "default_num_inference_steps": num_inference_steps,
            "default_guidance_scale": guidance_scale, "colours": list(COLOURS), "shapes": list(SHAPES),
            "templates": list(TEMPLATES), "colour_prompt": COLOUR_PROMPT, "shape_prompt": SHAPE_PROMPT, **extra}
