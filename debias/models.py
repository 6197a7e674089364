"""The SDN model: a 3D-ResNet backbone, an action head, and a scene head behind gradient reversal.

Backbones are torchvision's video ResNets (`r3d_18`, `mc3_18`, `r2plus1d_18`) for real runs, and
`r3d_narrow`: the same R3D blocks with `width` channels in the first stage instead of 64 (and
`blocks` per stage), small enough to train on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torchvision.models.video import mc3_18, r2plus1d_18, r3d_18
from torchvision.models.video.resnet import BasicBlock, Conv3DSimple

from debias.config import check

# Kinetics statistics used by torchvision's video models (inputs are RGB in [0, 1]).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@dataclass
class ModelConfig:
    backbone: Literal["r3d_narrow", "r3d_18", "mc3_18", "r2plus1d_18"] = "r3d_narrow"
    width: int = 8  # r3d_narrow: channels of the first stage (r3d_18 has 64); doubles per stage
    blocks: int = 1  # r3d_narrow: residual blocks per stage (r3d_18 has 2)
    scene_hidden: int = 64  # scene head: hidden units per layer (paper: 512)
    scene_layers: int = 1  # scene head: hidden layers of Linear + BatchNorm + ReLU (paper: 3)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check(self.width >= 1, "width", "must be >= 1")
        check(self.blocks >= 1, "blocks", "must be >= 1")
        check(self.scene_layers >= 0, "scene_layers", "must be >= 0")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:  # noqa: D102
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return -ctx.alpha * grad, None


def grad_reverse(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by -alpha (Ganin & Lempitsky, 2015)."""
    return _GradReverse.apply(x, alpha)


class GradReverse(nn.Module):
    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.alpha)


def narrow_r3d(width: int, blocks: int) -> nn.Sequential:
    """R3D with `width`, 2*width, 4*width, 8*width channels and `blocks` BasicBlocks per stage.

    Input (B, 3, T, H, W) -> features (B, 8*width).
    """
    stem = nn.Sequential(nn.Conv3d(3, width, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
                         nn.BatchNorm3d(width), nn.ReLU(inplace=True))
    stages, inplanes = [], width
    for i, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
        stride = 1 if i == 0 else 2
        for b in range(blocks):
            downsample = None
            if b == 0 and (stride != 1 or inplanes != planes):
                downsample = nn.Sequential(nn.Conv3d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm3d(planes))
            stages.append(BasicBlock(inplanes, planes, Conv3DSimple, stride if b == 0 else 1, downsample))
            inplanes = planes
    net = nn.Sequential(stem, *stages, nn.AdaptiveAvgPool3d(1), nn.Flatten())
    for m in net.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def build_backbone(cfg: ModelConfig) -> tuple[nn.Module, int]:
    """The backbone without its classifier, and its feature size."""
    if cfg.backbone == "r3d_narrow":
        return narrow_r3d(cfg.width, cfg.blocks), 8 * cfg.width
    net = {"r3d_18": r3d_18, "mc3_18": mc3_18, "r2plus1d_18": r2plus1d_18}[cfg.backbone](weights=None)
    features = net.fc.in_features
    net.fc = nn.Identity()
    return net, features


class SDN(nn.Module):
    """Backbone + action head + scene head. The scene head sees the features through a gradient
    reversal layer: it learns to predict the scene while the backbone is pushed to hide it."""

    def __init__(self, cfg: ModelConfig, num_actions: int, num_scenes: int, grl_alpha: float = 1.0) -> None:
        super().__init__()
        self.backbone, dim = build_backbone(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.action_head = nn.Linear(dim, num_actions)
        layers: list[nn.Module] = [GradReverse(grl_alpha)]
        for _ in range(cfg.scene_layers):
            layers += [nn.Linear(dim, cfg.scene_hidden), nn.BatchNorm1d(cfg.scene_hidden), nn.ReLU(inplace=True)]
            dim = cfg.scene_hidden
        self.scene_head = nn.Sequential(*layers, nn.Linear(dim, num_scenes))
        self.register_buffer("mean", torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1), persistent=False)

    def normalize(self, clips_uint8: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float, normalised (done on the device, not the loader)."""
        x = clips_uint8.permute(0, 4, 1, 2, 3).float().div_(255.0)
        return (x - self.mean) / self.std

    def forward(self, clips_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, H, W, 3) uint8 -> action logits (B, A), scene logits (B, S)."""
        features = self.dropout(self.backbone(self.normalize(clips_uint8)))
        return self.action_head(features), self.scene_head(features)
