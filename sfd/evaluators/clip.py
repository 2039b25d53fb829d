"""CLIP scores and zero-shot concept detection with open_clip models.

`ClipEvaluator` wraps an open_clip model and its tokenizer. The shapes world's tiny CLIP
(checkpoints/shapes/clip) is stored in open_clip's own local-folder format (`open_clip_config.json` with
`model_cfg` and `preprocess_cfg`, weights in `open_clip_model.safetensors`), so it is rebuilt offline by
open_clip itself (`create_model("local-dir:...")`); on a machine with a network, pretrained models come
from `ClipEvaluator.from_open_clip(name, tag)`.

Images go in as NCHW floats in [0, 1]; resizing to the model's input size and the mean/std
normalisation the model was trained with happen here, so callers never normalise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes" / "clip"  # sfd/evaluators/clip.py -> the checkout
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


@dataclass(frozen=True)
class ZeroShot:
    probs: torch.Tensor  # (n, k) softmax over the labels
    pred: torch.Tensor  # (n,) argmax label index


@dataclass(frozen=True)
class Detection:
    detected: torch.Tensor  # (n,) bool: the concept beats every contrast
    score: torch.Tensor  # (n,) probability of the concept among concept + contrasts


class ClipEvaluator:
    """Image/text embeddings, CLIP score, zero-shot classification and concept detection."""

    def __init__(self, model, tokenizer, mean: Sequence[float], std: Sequence[float], image_size: int,
                 model_cfg: dict | None = None, extra: dict | None = None):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.image_size = int(image_size)
        self.model_cfg = model_cfg  # open_clip model config; needed to save, None for hub models
        self.extra = dict(extra or {})  # anything else stored in the config file (training stats, labels)

    # ------------------------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, model_cfg: dict, mean: Sequence[float], std: Sequence[float], seed: int | None = None) -> "ClipEvaluator":
        """A randomly initialised open_clip `CLIP` built from a config dict (for training and tests)."""
        import open_clip

        if seed is not None:
            torch.manual_seed(seed)
        model = open_clip.CLIP(**model_cfg)
        ctx = model_cfg["text_cfg"].get("context_length", 77)
        size = model_cfg["vision_cfg"]["image_size"]
        return cls(model, open_clip.SimpleTokenizer(context_length=ctx), mean, std, size, model_cfg=model_cfg)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu") -> "ClipEvaluator":
        """Load a local open_clip folder (default: the shapes world's CLIP); never touches the network."""
        import open_clip

        path = Path(path) if path is not None else DEFAULT_PATH
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {path}: expected a folder written by ClipEvaluator.save_pretrained")
        cfg = json.loads((path / CONFIG_NAME).read_text())
        model = open_clip.create_model(f"local-dir:{path}", device=device)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        pp = cfg["preprocess_cfg"]
        extra = {k: v for k, v in cfg.items() if k not in ("model_cfg", "preprocess_cfg")}
        return cls(model, tokenizer, pp["mean"], pp["std"], cfg["model_cfg"]["vision_cfg"]["image_size"], cfg["model_cfg"], extra)

    @classmethod
    def from_open_clip(cls, name: str, pretrained: str | None = None, device: str | torch.device = "cpu") -> "ClipEvaluator":
        """A pretrained open_clip model, e.g. ("ViT-B-32", "laion2b_s34b_b79k"); needs a network or a warm cache."""
        import open_clip

        model = open_clip.create_model(name, pretrained=pretrained, device=device)
        pp = open_clip.get_model_preprocess_cfg(model)
        size = pp.get("size", model.visual.image_size)
        size = size[0] if isinstance(size, (tuple, list)) else size
        mean = pp.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = pp.get("std", open_clip.OPENAI_DATASET_STD)
        return cls(model, open_clip.get_tokenizer(name), mean, std, size, extra={"open_clip": [name, pretrained]})

    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
        """Write open_clip's local-folder format; `extra` entries are stored beside model_cfg/preprocess_cfg."""
        from safetensors.torch import save_file

        if self.model_cfg is None:
            raise ValueError("this evaluator has no model_cfg (a hub model); only config-built models can be saved")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = {
            "model_cfg": self.model_cfg,
            "preprocess_cfg": {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()},
            **self.extra,
        }
        (path / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
        state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(path / WEIGHTS_NAME))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "ClipEvaluator":
        self.model.to(device)
        return self

    # -------------------------------------------------------------------------------------- embeddings

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] NCHW -> the model's input size and normalisation."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        x = images.float().to(self.device)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True, align_corners=False)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings, with gradients (for training and guidance); use encode_images to evaluate."""
        return F.normalize(self.model.encode_image(self.preprocess(images)), dim=-1)

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings, with gradients."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens), dim=-1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return torch.cat([self.image_features(chunk) for chunk in images.split(batch_size)])

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return torch.cat([self.text_features(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])

    @torch.no_grad()
    def class_embeddings(self, labels: Sequence[str], templates: Sequence[str] = ("{}",)) -> torch.Tensor:
        """One unit vector per label: the mean of its template embeddings (CLIP's prompt ensembling)."""
        feats = self.encode_texts([t.format(label) for label in labels for t in templates])
        return F.normalize(feats.view(len(labels), len(templates), -1).mean(1), dim=-1)

    # ---------------------------------------------------------------------------------------- metrics

    @torch.no_grad()
    def clip_score(self, images: torch.Tensor, prompts: str | Sequence[str]) -> torch.Tensor:
        """Per-image CLIP score: 100 * max(cos(image, prompt), 0), as in Hessel et al. 2021 (w = 1 here).

        One prompt for all images, or one per image. Scores of different CLIP models are not comparable.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) not in (1, len(images)):
            raise ValueError(f"got {len(prompts)} prompts for {len(images)} images; pass one, or one per image")
        img = self.encode_images(images)
        txt = self.encode_texts(prompts).to(img.device)
        return 100 * (img * txt).sum(-1).clamp(min=0)

    @torch.no_grad()
    def zero_shot(self, images: torch.Tensor, labels: Sequence[str], templates: Sequence[str] = ("{}",)) -> ZeroShot:
        """Zero-shot classification of images among `labels` ("{}" in each template is replaced by a label)."""
        if len(labels) < 2:
            raise ValueError(f"zero-shot classification needs at least 2 labels, got {list(labels)}")
        img = self.encode_images(images)
        cls = self.class_embeddings(labels, templates).to(img.device)
        logits = self.model.logit_scale.exp().float() * img @ cls.T
        probs = logits.softmax(-1)
        return ZeroShot(probs=probs, pred=probs.argmax(-1))

    @torch.no_grad()
    def detect(self, images: torch.Tensor, concept: str, contrasts: Sequence[str], templates: Sequence[str] = ("{}",)) -> Detection:
        """The concept is detected in an image when it wins the zero-shot vote against every contrast concept."""
        contrasts = [c for c in contrasts if c != concept]
        if not contrasts:
            raise ValueError(f"detect needs at least one contrast concept different from {concept!r}")
        zs = self.zero_shot(images, [concept, *contrasts], templates)
        return Detection(detected=zs.pred == 0, score=zs.probs[:, 0])
