"""lambda_scene as the official code means it: the scene head learns at its own rate (loss weight 1) and
only the reversed gradient the backbone gets is scaled, by grl_alpha x lambda_scene."""

import copy

import torch

from debias.training.models import SDN, ModelConfig
from debias.training.train import LossConfig, OptimConfig, make_optimizer, train_one_epoch


def _grads(model: SDN, batch: dict, lambda_scene: float, grl_alpha: float) -> dict[str, torch.Tensor]:
    """Every parameter's gradient after one train_one_epoch step on `batch` (lr 0: nothing moves)."""
    model = copy.deepcopy(model)
    model.set_grl_alpha(grl_alpha)
    optimizer = make_optimizer(model, OptimConfig(lr=1e-12, momentum=0.0, weight_decay=0.0))
    train_one_epoch(model, [batch], optimizer, LossConfig(lambda_scene=lambda_scene, lambda_mask=0.0,
                                                          scene_target="hard"), torch.device("cpu"))
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_scene_weight_scales_only_the_backbones_reversed_gradient():
    torch.manual_seed(0)
    model = SDN(ModelConfig(width=2, scene_layers=1, scene_hidden=8), num_actions=3, num_scenes=5)
    batch = {"clips": torch.randint(0, 255, (6, 4, 16, 16, 3), dtype=torch.uint8),
             "label_id": torch.tensor([0, 1, 2, 0, 1, 2]), "scene_id": torch.tensor([0, 1, 2, 3, 4, 0]),
             "scene_probs": torch.zeros(6, 5)}
    alpha = 0.5
    g0, g1, g3 = (_grads(model, batch, ls, alpha) for ls in (0.0, 1.0, 3.0))
    scene_head = [n for n in g1 if n.startswith("scene_head.")]
    backbone = [n for n in g1 if n.startswith("backbone.")]
    assert scene_head and backbone
    for name in scene_head:  # the adversary's own gradient does not depend on its weight (not even at 0)
        assert torch.allclose(g0[name], g1[name]) and torch.allclose(g3[name], g1[name]), name
    for name in backbone:  # backbone = action part + lambda_scene x (reversed scene part)
        reversed_part = g1[name] - g0[name]
        assert reversed_part.abs().max() > 0, name
        # float32 sums: a tolerance relative to the tensor's largest entry
        assert torch.allclose(g3[name] - g0[name], 3.0 * reversed_part, rtol=0, atol=1e-4 * reversed_part.abs().max()), name


def test_scene_weight_zero_leaves_the_backbone_as_the_baseline_trains_it():
    torch.manual_seed(1)
    model = SDN(ModelConfig(width=2, scene_layers=0), num_actions=2, num_scenes=3)
    batch = {"clips": torch.randint(0, 255, (4, 4, 16, 16, 3), dtype=torch.uint8),
             "label_id": torch.tensor([0, 1, 0, 1]), "scene_id": torch.tensor([0, 1, 2, 0]),
             "scene_probs": torch.zeros(4, 3)}
    g0 = _grads(model, batch, 0.0, 1.0)
    # reference: the action loss alone, by hand
    ref = copy.deepcopy(model)
    torch.nn.functional.cross_entropy(ref(batch["clips"]).action, batch["label_id"]).backward()
    for name, p in ref.named_parameters():
        if name.startswith("backbone."):
            assert torch.allclose(g0[name], p.grad, atol=1e-7), name
