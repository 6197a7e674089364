import torch

from debias.training.losses import action_loss, entropy, mask_confusion_loss, mask_head_loss, scene_loss
from debias.training.models import SDN, ModelConfig, grad_reverse


def test_grad_reverse_is_identity_forward_and_negates_scaled_gradient_backward():
    x = torch.randn(5, 3, requires_grad=True)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    weights = torch.randn(5, 3)
    (y * weights).sum().backward()
    assert torch.allclose(x.grad, -0.7 * weights)


def test_scene_head_gets_true_gradient_and_backbone_the_reversed_one():
    torch.manual_seed(0)
    model = SDN(ModelConfig(width=2, scene_layers=0), num_actions=3, num_scenes=4, grl_alpha=2.0)
    clips = torch.randint(0, 255, (2, 4, 16, 16, 3), dtype=torch.uint8)
    target = torch.tensor([1, 3])
    # Reference: the same network without reversal, where the backbone's gradient descends the scene loss.
    scene_loss(model(clips).scene, target).backward()
    reversed_grad = model.backbone[0][0].weight.grad.clone()
    head_grad = model.scene_head[-1].weight.grad.clone()
    model.zero_grad()
    model.scene_head[0].alpha = -1.0  # -(-1) = +1: plain backprop
    scene_loss(model(clips).scene, target).backward()
    assert torch.allclose(model.scene_head[-1].weight.grad, head_grad)
    assert torch.allclose(reversed_grad, -2.0 * model.backbone[0][0].weight.grad, atol=1e-6)


def test_mask_confusion_gradient_step_raises_entropy():
    torch.manual_seed(0)
    logits = torch.randn(8, 5) * 3
    logits.requires_grad_(True)
    before = entropy(logits).mean().item()
    loss = mask_confusion_loss(logits)
    assert -torch.log(torch.tensor(5.0)) <= loss <= 0
    loss.backward()
    after = entropy(logits - 0.5 * logits.grad).mean().item()
    assert after > before


def test_mask_confusion_ignores_invalid_clips():
    logits = torch.tensor([[5.0, 0.0], [0.0, 0.0]])
    only_uniform = mask_confusion_loss(logits, torch.tensor([False, True]))
    assert torch.isclose(only_uniform, -torch.log(torch.tensor(2.0)))
    assert mask_confusion_loss(logits, torch.tensor([False, False])) == 0


def test_soft_scene_loss_with_one_hot_equals_hard_and_matches_definition():
    torch.manual_seed(0)
    logits = torch.randn(4, 6)
    hard = torch.tensor([0, 5, 2, 2])
    one_hot = torch.nn.functional.one_hot(hard, 6).float()
    assert torch.isclose(scene_loss(logits, hard), scene_loss(logits, one_hot))
    soft = torch.softmax(torch.randn(4, 6), dim=1)
    expected = -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.isclose(scene_loss(logits, soft), expected)
    assert torch.isclose(action_loss(logits, hard), scene_loss(logits, hard))


def test_separate_mask_head_is_confident_while_the_backbone_is_pushed_to_confusion():
    """The sign the method needs: a step on the head's own gradient lowers its entropy on masked
    clips (the adversary), a step on the backbone's (reversed) gradient raises it."""
    torch.manual_seed(0)
    model = SDN(ModelConfig(width=2, mask_head="separate"), num_actions=4, num_scenes=3, grl_alpha=1.0)
    model.eval()  # fixed BatchNorm statistics: only the weights move
    masked = torch.randint(0, 255, (6, 4, 16, 16, 3), dtype=torch.uint8)
    mask_head_loss(model(masked).mask).backward()

    def entropy_after(params: list, lr: float) -> float:
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                p -= lr * p.grad
            value = entropy(model(masked).mask).mean().item()
            for p, s in zip(params, saved):
                p.copy_(s)
        return value

    before = entropy(model(masked).mask).mean().item()
    assert entropy_after(list(model.mask_head.parameters()), 0.5) < before
    assert entropy_after(list(model.backbone.parameters()), 0.5) > before
    assert model(masked).mask.shape == (6, 4) and not torch.equal(model(masked).mask, model(masked).action)
