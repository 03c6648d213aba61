"""Helpers shared by the model-family tests (TSN, TSM, two-stream): realistic eval-mode statistics
and a few optimiser steps on a fixed batch."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def calibrate_batch_norm(model: nn.Module, *inputs: Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of one training forward on `inputs`, then
    switch to eval. Fresh statistics (mean 0, variance 1) shrink the activations of a deep untrained
    network towards zero in eval mode, where comparisons would then test only the classifier bias."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(*inputs)
    return model.eval()


def fit(model: nn.Module, inputs: tuple, labels: Tensor, loss_fn: Callable, steps: int = 4) -> list[float]:
    """`steps` Adam steps (lr 1e-3) on one fixed batch minimising loss_fn(model, inputs, labels); every step's loss."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(steps):
        loss = loss_fn(model, inputs, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses
