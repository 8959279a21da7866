"""Registry of the nonlinear operations used by the cell programs and their sound relaxations.

Adding an operation means one :class:`OpRelaxation` and one line in :data:`RELAXATIONS`; the
soundness tests are parametrised over this registry, so an untested relaxation cannot exist.
"""

from __future__ import annotations

import torch

from rnnguard.relaxations import functions as _f
from rnnguard.relaxations.base import OpRelaxation, Planes

RELAXATIONS: dict[str, OpRelaxation] = {
    "tanh": OpRelaxation("tanh", 1, torch.tanh, _f.tanh_interval, _f.tanh_planes),
    "sigmoid": OpRelaxation("sigmoid", 1, torch.sigmoid, _f.sigmoid_interval, _f.sigmoid_planes),
    "relu": OpRelaxation("relu", 1, torch.relu, _f.relu_interval, _f.relu_planes),
    "sigmoid_tanh": OpRelaxation("sigmoid_tanh", 2, _f.sigmoid_tanh, _f.sigmoid_tanh_interval, _f.sigmoid_tanh_planes),
    "mul_sigmoid": OpRelaxation("mul_sigmoid", 2, _f.mul_sigmoid, _f.mul_sigmoid_interval, _f.mul_sigmoid_planes),
    "mul": OpRelaxation("mul", 2, _f.mul, _f.mul_interval, _f.mul_planes),
}

__all__ = ["RELAXATIONS", "OpRelaxation", "Planes"]
