"""The SDN model: a 3D-ResNet backbone, an action head, and a scene head behind gradient reversal.

Backbones are torchvision's video ResNets (`r3d_18`, `mc3_18`, `r2plus1d_18`) for real runs, and
`r3d_narrow`: the same R3D blocks with `width` channels in the first stage instead of 64 (and
`blocks` per stage), small enough to train on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn
from torchvision.models.video import mc3_18, r2plus1d_18, r3d_18
from torchvision.models.video.resnet import BasicBlock, Conv3DSimple

from debias.config import PathStr, check

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
    # Where the human-mask confusion loss is read: "shared" = the action head (the seed study),
    # "separate" = its own linear head behind a gradient reversal layer (the official code's layout).
    mask_head: Literal["shared", "separate"] = "shared"
    # Backbone BatchNorm layers keep their running statistics (not updated, not batch-computed): for
    # fine-tuning with a few clips per GPU, where batch statistics are noise.
    freeze_bn: bool = False
    # Backbone weights to start from (heads start fresh, so the number of classes may differ): one of
    # our pretrain checkpoints (its folder, the state.pt in it, or a run folder OUT/NAME: its latest
    # checkpoint) or, for the torchvision backbones, a torchvision-format weights file (.pth); local or a
    # URI. "" = random initialisation.
    init_from: PathStr = ""

    def __post_init__(self) -> None:
        check(self.width >= 1, "width", "must be >= 1")
        check(self.blocks >= 1, "blocks", "must be >= 1")
        check(self.scene_layers >= 0, "scene_layers", "must be >= 0")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.alpha * grad, None


def grad_reverse(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by -alpha (Ganin & Lempitsky, 2015)."""
    return _GradReverse.apply(x, alpha)


class GradReverse(nn.Module):
    """Reversal by -alpha * weight: `alpha` is the GRL scale (scheduled per epoch), `weight` the loss weight
    of the adversary behind it. The adversary's own loss enters the objective with weight 1, so it
    learns at its own rate whatever `weight` is; only what reaches the backbone is scaled."""

    def __init__(self, alpha: float, weight: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.weight = alpha, weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.alpha * self.weight)


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


def load_backbone(backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` (backbone weights, as `debias.training.runs.backbone_weights` reads them) into `backbone`;
    every key and shape must match, else ValueError saying which."""
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"backbone keys do not match this model.backbone: missing {missing[:3]}"
                         f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                         f"{' ...' if len(unexpected) > 3 else ''} ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected)")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ValueError(f"backbone weight {k} has shape {tuple(v.shape)}, this model.backbone "
                             f"expects {tuple(own[k].shape)} (another width/backbone?)")
    backbone.load_state_dict(state)


class Logits(NamedTuple):
    """What `SDN.forward` returns for a batch of B clips."""

    action: torch.Tensor  # (B, A) action head
    scene: torch.Tensor  # (B, S) scene head (behind gradient reversal)
    mask: torch.Tensor  # (B, A) where the mask confusion loss reads: the action head itself when
    #                     model.mask_head is "shared", the separate mask head (behind reversal) otherwise


class SDN(nn.Module):
    """Backbone + action head + scene head (+ optional mask head). The scene head sees the features
    through a gradient reversal layer: it learns to predict the scene while the backbone is pushed to
    hide it.

    A separate mask head is an adversary too: it is trained to be *confident* on masked clips (its
    loss is the entropy, see `losses.mask_head_loss`) and the backbone, through the reversal, is pushed
    to make it uncertain. (The official code reverses the gradient of a loss that already maximises
    the entropy, which hands the backbone the opposite goal; this is the sign the method asks for.)
    """

    def __init__(self, cfg: ModelConfig, num_actions: int, num_scenes: int, grl_alpha: float = 1.0) -> None:
        super().__init__()
        self.freeze_bn = cfg.freeze_bn
        self.backbone, dim = build_backbone(cfg)  # cfg.init_from is loaded by debias.training.runs.build_model
        self.dropout = nn.Dropout(cfg.dropout)
        self.action_head = nn.Linear(dim, num_actions)
        layers: list[nn.Module] = [GradReverse(grl_alpha)]
        for _ in range(cfg.scene_layers):
            layers += [nn.Linear(dim, cfg.scene_hidden), nn.BatchNorm1d(cfg.scene_hidden), nn.ReLU(inplace=True)]
            dim = cfg.scene_hidden
        self.scene_head = nn.Sequential(*layers, nn.Linear(dim, num_scenes))
        self.mask_head = (nn.Sequential(GradReverse(grl_alpha), nn.Linear(self.action_head.in_features, num_actions))
                          if cfg.mask_head == "separate" else None)
        self.register_buffer("mean", torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1), persistent=False)

    def normalize(self, clips_uint8: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float, normalised (done on the device, not the loader)."""
        x = clips_uint8.permute(0, 4, 1, 2, 3).float().div_(255.0)
        return (x - self.mean) / self.std

    def features(self, clips_uint8: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, 3) uint8 -> pooled backbone features (B, D), before dropout."""
        return self.backbone(self.normalize(clips_uint8))

    def forward(self, clips_uint8: torch.Tensor) -> Logits:
        """(B, T, H, W, 3) uint8 -> Logits(action (B, A), scene (B, S), mask (B, A)).

        Every head runs on every clip (heads cost nothing next to the backbone), so that a DDP-wrapped
        model computes all its outputs in the one forward call that DDP synchronises.
        """
        features = self.dropout(self.features(clips_uint8))
        action = self.action_head(features)
        mask = self.mask_head(features) if self.mask_head is not None else action
        return Logits(action, self.scene_head(features), mask)

    def set_grl_alpha(self, alpha: float) -> None:
        """Set the reversal scale of every gradient reversal layer (scheduled GRL, as in DANN)."""
        for m in self.modules():
            if isinstance(m, GradReverse):
                m.alpha = alpha

    def set_scene_weight(self, lambda_scene: float) -> None:
        """The scene loss weight: it scales only the reversed gradient the backbone gets from the scene
        head (-grl_alpha * lambda_scene * dL_scene), not the head's own gradient (official code)."""
        self.scene_head[0].weight = lambda_scene

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the freshly initialised heads (everything but the backbone)."""
        return [p for name, p in self.named_parameters() if not name.startswith("backbone.")]

    def train(self, mode: bool = True) -> SDN:
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self
