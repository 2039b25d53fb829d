"""Classifier judges: a small CNN for the digits world, saved as safetensors + JSON config.

A judge gives per-image class probabilities (for forget/retain accuracy) and penultimate-layer
features (for the Frechet distance of the world, see `sfd.evaluators.fid`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "judge_config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class JudgeConfig:
    in_channels: int = 1
    image_size: int = 8
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 128
    class_names: tuple[str, ...] = tuple(str(i) for i in range(10))


class ConvJudge(nn.Module):
    """Two conv blocks and an MLP head; input in [-1, 1], NCHW."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = 2 * w * (config.image_size // 4) ** 2
        self.features_head = nn.Sequential(nn.Dropout(0.2), nn.Linear(flat, config.feature_dim), nn.GELU())
        self.classifier = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg = asdict(self.config)
        cfg["class_names"] = list(cfg["class_names"])
        (path / CONFIG_NAME).write_text(json.dumps({"architecture": "ConvJudge", **cfg}, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ConvJudge":
        path = Path(path)
        cfg = json.loads((path / CONFIG_NAME).read_text())
        cfg.pop("architecture", None)
        cfg["class_names"] = tuple(cfg["class_names"])
        judge = cls(JudgeConfig(**cfg))
        judge.load_state_dict({k: v.float() for k, v in load_file(str(path / WEIGHTS_NAME)).items()})
        return judge.eval()


@torch.no_grad()
def judge_images(judge: ConvJudge, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, penultimate features) for images in [-1, 1]."""
    preds, feats = [], []
    for chunk in images.split(batch_size):
        f = judge.features(chunk.float())
        feats.append(f)
        preds.append(judge.classifier(f).argmax(1))
    return torch.cat(preds), torch.cat(feats)
