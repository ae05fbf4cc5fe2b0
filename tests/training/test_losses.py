import pytest
import torch

from napari_samed2.errors import TrainingError
from napari_samed2.training.losses import (
    LOSS_WEIGHTS,
    check_weights,
    combine,
    dice_loss,
    iou_l1_loss,
    mask_losses,
    sigmoid_focal_loss,
)


def _target():
    target = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    target[..., 4:12, 4:12] = True
    return target


def test_a_confident_right_mask_costs_almost_nothing_and_a_wrong_one_a_lot():
    target = _target()
    right = torch.where(target, 20.0, -20.0).float()
    assert sigmoid_focal_loss(right, target).item() < 1e-6
    assert dice_loss(right, target).item() < 1e-3
    assert iou_l1_loss(torch.ones(1, 1), right, target).item() == 0.0
    wrong = -right
    assert sigmoid_focal_loss(wrong, target).item() > 1.0
    assert dice_loss(wrong, target).item() > 0.9
    assert iou_l1_loss(torch.ones(1, 1), wrong, target).item() == 1.0


def test_multimask_supervises_the_best_mask_and_every_iou():
    target = _target()
    right = torch.where(target, 20.0, -20.0).float()
    logits = torch.cat([-right, right, -right], dim=1)  # the second candidate is right
    ious = torch.tensor([[0.0, 1.0, 0.5]], requires_grad=True)
    terms = mask_losses(logits, ious, torch.tensor([[5.0]]), target)
    assert terms["focal"].item() < 1e-6 and terms["dice"].item() < 1e-3
    assert terms["iou"].item() == pytest.approx(0.5 / 3)  # only the third IoU guess is off, by 0.5
    terms["iou"].backward()
    assert ious.grad[0, 2] != 0 and ious.grad[0, 1] == 0


def test_absent_object_trains_only_the_object_score():
    target = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    logits = torch.randn(1, 1, 16, 16, requires_grad=True)
    score = torch.tensor([[3.0]], requires_grad=True)
    terms = mask_losses(logits, torch.rand(1, 1), score, target)
    assert terms["focal"].item() == terms["dice"].item() == terms["iou"].item() == 0.0
    assert terms["object_score"].item() > 3.0
    combine(terms, LOSS_WEIGHTS).backward()
    assert score.grad.item() > 0 and not logits.grad.any()


def test_combiner_weights_each_named_term():
    terms = {name: torch.tensor(1.0) for name in LOSS_WEIGHTS}
    assert combine(terms, LOSS_WEIGHTS).item() == pytest.approx(23.0)
    assert check_weights({"dice": 2.0})["focal"] == 20.0
    with pytest.raises(TrainingError, match="unknown loss terms"):
        check_weights({"boundary": 1.0})
