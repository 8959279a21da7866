"""Cell programs: one time step of each recurrent cell, written once, generic over the domain.

Each step uses only the :class:`rnnguard.domains.base.AbstractValue` protocol, so the same code
runs concretely (``Point``, checked against ``nn.RNN/LSTM/GRU``) and abstractly (Box, Zonotope,
InterZono).  Gate order is PyTorch's: LSTM ``i, f, g, o``; GRU ``r, z, n``.

Products are mapped to the two-input relaxations:

* LSTM ``c = f*c_prev + i*g = mul_sigmoid(c_prev, f_pre) + sigmoid_tanh(i_pre, g_pre)``,
  ``h = sigmoid_tanh(o_pre, c)``;
* GRU ``n = tanh(x_n + r*(W_hn h + b_hn))`` with ``r*(...) = mul_sigmoid(W_hn h + b_hn, r_pre)``,
  and ``h' = (1-z)*n + z*h = sigmoid_tanh(-z_pre, n_pre) + mul_sigmoid(h, z_pre)``
  (``1 - sigma(a) = sigma(-a)`` fuses the update gate with n's tanh); since h' is a convex
  combination of n and h, its bounds are also met with ``[min(l_n, l_h), max(u_n, u_h)]``
  (a free tightening for Box and for InterZono's support).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal

import torch
from torch import Tensor

from rnnguard.domains.base import AbstractValue, apply_sum
from rnnguard.relaxations import RELAXATIONS

CellKind = Literal["rnn_tanh", "rnn_relu", "lstm", "gru"]
GATES: dict[str, int] = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


@dataclass(frozen=True)
class RecurrentLayer:
    """Weights of one recurrent layer in PyTorch's layout (``weight_ih: (gates*h, d)``)."""

    kind: CellKind
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None

    @property
    def hidden_size(self) -> int:
        return self.weight_hh.shape[1]

    @property
    def input_size(self) -> int:
        return self.weight_ih.shape[1]

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> "RecurrentLayer":
        cast = lambda t: None if t is None else t.to(dtype=dtype, device=device)  # noqa: E731
        return replace(self, weight_ih=cast(self.weight_ih), weight_hh=cast(self.weight_hh),
                       bias_ih=cast(self.bias_ih), bias_hh=cast(self.bias_hh))


@dataclass(frozen=True)
class Program:
    """A lowered classifier: stacked recurrent layers, then ``logits = head_weight @ h_last + head_bias``."""

    layers: tuple[RecurrentLayer, ...]
    head_weight: Tensor
    head_bias: Tensor

    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def num_classes(self) -> int:
        return self.head_weight.shape[0]

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> "Program":
        return Program(tuple(layer.to(dtype, device) for layer in self.layers),
                       self.head_weight.to(dtype=dtype, device=device), self.head_bias.to(dtype=dtype, device=device))


def _sum_bias(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


State = tuple[AbstractValue, ...]


def _rnn_step(layer: RecurrentLayer, x: AbstractValue, state: State) -> State:
    (h,) = state
    pre = x.affine(layer.weight_ih, _sum_bias(layer.bias_ih, layer.bias_hh)) + h.affine(layer.weight_hh)
    return (pre.apply("tanh" if layer.kind == "rnn_tanh" else "relu"),)


def _lstm_step(layer: RecurrentLayer, x: AbstractValue, state: State) -> State:
    h, c = state
    pre = x.affine(layer.weight_ih, _sum_bias(layer.bias_ih, layer.bias_hh)) + h.affine(layer.weight_hh)
    i, f, g, o = pre.chunk(4)
    if c is None:  # c_0 = 0 contributes nothing: skip the product at the first step
        c_new = i.apply("sigmoid_tanh", g)
    else:
        c_new = apply_sum([("mul_sigmoid", (c, f)), ("sigmoid_tanh", (i, g))])
    return o.apply("sigmoid_tanh", c_new), c_new


def _gru_step(layer: RecurrentLayer, x: AbstractValue, state: State) -> State:
    (h,) = state
    xr, xz, xn = x.affine(layer.weight_ih, layer.bias_ih).chunk(3)
    hr, hz, hn = h.affine(layer.weight_hh, layer.bias_hh).chunk(3)
    r_pre, z_pre = xr + hr, xz + hz
    n_pre = xn + hn.apply("mul_sigmoid", r_pre)
    h_new = apply_sum([("sigmoid_tanh", (-z_pre, n_pre)), ("mul_sigmoid", (h, z_pre))])
    # h' = (1-z) n + z h is a convex combination: it lies between min(n, h) and max(n, h).
    n_lo, n_hi = RELAXATIONS["tanh"].interval(*n_pre.bounds())
    h_lo, h_hi = h.bounds()
    return (h_new.meet_interval(torch.minimum(n_lo, h_lo), torch.maximum(n_hi, h_hi)),)


STEPS: dict[str, Callable[[RecurrentLayer, AbstractValue, State], State]] = {
    "rnn_tanh": _rnn_step,
    "rnn_relu": _rnn_step,
    "lstm": _lstm_step,
    "gru": _gru_step,
}


def _initial_state(layer: RecurrentLayer, zeros: AbstractValue) -> State:
    return (zeros, None) if layer.kind == "lstm" else (zeros,)


def _select(active: Tensor, new: State, old: State) -> State:
    return tuple(n if o is None else n.where(active, o) for n, o in zip(new, old))


def unroll(
    program: Program,
    frames: list[AbstractValue],
    lengths: Tensor,
    constant: Callable[[Tensor], AbstractValue],
) -> AbstractValue:
    """Run all layers over all frames; returns the top layer's hidden state at each region's last frame.

    A region of length L stops updating its state after frame L-1 (masked update), so a
    variable-length batch gives each sample exactly what it would get alone."""
    R = lengths.shape[0]
    T = len(frames)
    min_len = int(lengths.min().item())
    inputs = frames
    h = None
    for layer in program.layers:
        zeros = constant(layer.weight_hh.new_zeros(R, layer.hidden_size))
        state = _initial_state(layer, zeros)
        step = STEPS[layer.kind]
        outputs = []
        for t in range(T):
            new = step(layer, inputs[t], state)
            state = new if t < min_len else _select(lengths > t, new, state)
            outputs.append(state[0])
        inputs, h = outputs, state[0]
    return h
