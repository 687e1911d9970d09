from types import SimpleNamespace

import pytest
import torch
from torch import nn

from retain.fisher import diagonal_fisher


class Linear(nn.Module):
    """loss = ½(w·x + b − y)², so ∂loss/∂w = (w·x + b − y)·x and ∂loss/∂b = (w·x + b − y)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0]))
        self.b = nn.Parameter(torch.tensor(0.25))

    def forward(self, x, y):
        return SimpleNamespace(loss=0.5 * ((x @ self.w + self.b - y) ** 2).mean())


def test_fisher_matches_hand_computation():
    model = Linear()
    xs = [torch.tensor([[1.0, 2.0]]), torch.tensor([[-1.0, 0.5]]), torch.tensor([[3.0, 0.0]])]
    ys = [torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([2.0])]
    residuals = [0.5 * 1 - 1 * 2 + 0.25 - 0, 0.5 * -1 - 1 * 0.5 + 0.25 - 1, 0.5 * 3 + 0.25 - 2]
    expected_w = sum((r * x[0]) ** 2 for r, x in zip(residuals, xs)) / 3
    expected_b = torch.tensor(sum(r**2 for r in residuals) / 3)

    fisher = diagonal_fisher(model, ({"x": x, "y": y} for x, y in zip(xs, ys)), dict(model.named_parameters()))

    torch.testing.assert_close(fisher["w"], expected_w)
    torch.testing.assert_close(fisher["b"], expected_b)
    assert model.w.grad is None, "the estimate must not leave gradients behind"


def test_fisher_is_mean_of_squares_not_square_of_mean():
    model = Linear()
    batches = [{"x": torch.tensor([[1.0, 0.0]]), "y": torch.tensor([1.5])}, {"x": torch.tensor([[1.0, 0.0]]), "y": torch.tensor([0.0])}]
    # residuals are −0.75 and +0.75: the mean gradient is zero but the Fisher is not.
    fisher = diagonal_fisher(model, batches, {"b": model.b})
    assert fisher["b"].item() == pytest.approx(0.5625)


def test_fisher_needs_examples():
    model = Linear()
    with pytest.raises(ValueError, match="no examples"):
        diagonal_fisher(model, [], {"b": model.b})
