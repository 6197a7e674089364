"""The three SDN losses, as pure functions.

Total (joint update): L = L_action + L_scene + lambda_mask * L_mask, where the scene head learns from
L_scene at weight 1 and its gradient reaches the backbone reversed and scaled by grl_alpha x
lambda_scene (the gradient reversal layer sits in the model's scene head, as in the official code),
and L_mask is the negative entropy of the action prediction on the human-masked clip, so minimising it
maximises that entropy: without the people, the model should not know the action.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def action_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy. logits (B, A) float, labels (B,) int64 -> scalar."""
    return F.cross_entropy(logits, labels)


def scene_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scene cross-entropy against hard or soft pseudo labels.

    logits (B, S); target (B,) int64 class ids (hard) or (B, S) float probabilities (soft,
    e.g. Places365 predictions averaged over frames) -> scalar.
    """
    if target.dtype in (torch.int32, torch.int64):
        return F.cross_entropy(logits, target.long())
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def mask_confusion_loss(masked_logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean negative entropy sum_a p_a log p_a of the action prediction on human-masked clips.

    masked_logits (B, A); valid (B,) bool marks clips whose masks qualify (e.g. >= 70 % of frames show
    a person) -> scalar in [-log A, 0]; 0 when no clip is valid. Minimising it maximises the entropy.
    """
    log_p = F.log_softmax(masked_logits, dim=1)
    neg_entropy = (log_p.exp() * log_p).sum(dim=1)
    if valid is None:
        return neg_entropy.mean()
    weights = valid.to(neg_entropy.dtype)
    return (neg_entropy * weights).sum() / weights.sum().clamp(min=1.0)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy in nats. logits (B, A) -> (B,)."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def mask_head_loss(masked_logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Loss of a separate mask head behind gradient reversal: the mean entropy (valid clips only).

    masked_logits (B, A) from the mask head on human-masked clips; valid (B,) bool -> scalar in
    [0, log A]. The head minimises it (learns to be confident without the people); the reversal hands
    the backbone the opposite gradient, so the backbone maximises the entropy, as the shared-head
    `mask_confusion_loss` does directly.
    """
    return -mask_confusion_loss(masked_logits, valid)
