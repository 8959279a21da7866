"""Classifier modules and the lowering of users' PyTorch modules into cell programs.

What :func:`lower` accepts (with the user's own weights, nothing rewritten):

* :class:`SequenceClassifier`;
* any module whose direct children are exactly one ``nn.RNN`` (tanh or relu), ``nn.LSTM`` or
  ``nn.GRU`` (any number of layers, ``batch_first`` either way, with or without bias,
  unidirectional, ``proj_size=0``) and one ``nn.Linear`` from the hidden size to the classes,
  plus optional ``nn.Dropout``/``nn.Identity`` children, and whose ``forward(x)`` returns
  ``linear(last hidden state of the top layer)``.  That last condition is checked at lowering
  time by running the module and the lowered program on a small random input.

Anything else raises :class:`~rnnguard.errors.UnsupportedModelError` naming the offending submodule.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from rnnguard.cells import Program, RecurrentLayer, unroll
from rnnguard.domains import Point
from rnnguard.errors import InvalidInputError, UnknownNameError, UnsupportedModelError

ModelKind = Literal["rnn", "rnn_relu", "lstm", "gru"]
_RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)


class SequenceClassifier(nn.Module):
    """Recurrent encoder followed by a linear layer on the last hidden state.

    ``forward(x, lengths=None)`` takes ``x`` as ``(B, T, d)`` (``(T, B, d)`` when
    ``batch_first=False``) and uses each sample's hidden state at frame ``lengths[b]-1``."""

    def __init__(self, kind: ModelKind, input_size: int, hidden_size: int, num_classes: int, *,
                 num_layers: int = 1, batch_first: bool = True, bias: bool = True) -> None:
        super().__init__()
        if kind not in ("rnn", "rnn_relu", "lstm", "gru"):
            raise UnknownNameError(f"unknown model kind {kind!r}; choose rnn, rnn_relu, lstm or gru")
        self.kind = kind
        common = dict(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                      batch_first=batch_first, bias=bias)
        if kind in ("rnn", "rnn_relu"):
            self.rnn: nn.Module = nn.RNN(nonlinearity="relu" if kind == "rnn_relu" else "tanh", **common)
        else:
            self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(**common)
        self.head = nn.Linear(hidden_size, num_classes)

    def config(self) -> dict:
        r = self.rnn
        return dict(kind=self.kind, input_size=r.input_size, hidden_size=r.hidden_size, num_classes=self.head.out_features,
                    num_layers=r.num_layers, batch_first=r.batch_first, bias=r.bias)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        out, _ = self.rnn(x)
        if not self.rnn.batch_first:
            out = out.transpose(0, 1)
        if lengths is None:
            last = out[:, -1]
        else:
            last = out[torch.arange(out.shape[0], device=out.device), lengths.to(out.device) - 1]
        return self.head(last)


def _lower_recurrent(name: str, rnn: nn.Module) -> tuple[RecurrentLayer, ...]:
    if getattr(rnn, "bidirectional", False):
        raise UnsupportedModelError(f"submodule {name!r}: bidirectional recurrent layers are not supported")
    if getattr(rnn, "proj_size", 0):
        raise UnsupportedModelError(f"submodule {name!r}: LSTM with proj_size > 0 is not supported")
    if isinstance(rnn, nn.LSTM):
        kind = "lstm"
    elif isinstance(rnn, nn.GRU):
        kind = "gru"
    else:
        kind = "rnn_relu" if rnn.nonlinearity == "relu" else "rnn_tanh"
    layers = []
    for k in range(rnn.num_layers):
        get = lambda n: getattr(rnn, f"{n}_l{k}", None)  # noqa: E731
        layers.append(RecurrentLayer(kind, get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")))
    return tuple(layers)


def _find_parts(model: nn.Module) -> tuple[str, nn.Module, str, nn.Linear]:
    recurrent, linear = [], []
    for name, child in model.named_children():
        if isinstance(child, _RECURRENT):
            recurrent.append((name, child))
        elif isinstance(child, nn.Linear):
            linear.append((name, child))
        elif isinstance(child, (nn.Dropout, nn.Identity)):
            continue
        else:
            raise UnsupportedModelError(
                f"submodule {name!r} ({type(child).__name__}) is not supported: expected one nn.RNN/nn.LSTM/nn.GRU "
                "and one nn.Linear (plus optional Dropout/Identity)")
    if len(recurrent) != 1 or len(linear) != 1:
        raise UnsupportedModelError(
            f"{type(model).__name__}: expected exactly one recurrent submodule and one nn.Linear, found "
            f"{[n for n, _ in recurrent]} and {[n for n, _ in linear]}")
    return (*recurrent[0], *linear[0])


def lower(model: nn.Module, *, check: bool = True) -> Program:
    """Turn a supported classifier into a :class:`~rnnguard.cells.Program` (see module docstring)."""
    if isinstance(model, Program):
        return model
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected an nn.Module, got {type(model).__name__}")
    rnn_name, rnn, head_name, head = _find_parts(model)
    layers = _lower_recurrent(rnn_name, rnn)  # rejects bidirectional / proj_size before the head check
    if head.in_features != rnn.hidden_size:
        raise UnsupportedModelError(
            f"submodule {head_name!r}: in_features={head.in_features} does not match hidden_size={rnn.hidden_size}")
    bias = head.bias if head.bias is not None else head.weight.new_zeros(head.out_features)
    program = Program(layers, head.weight, bias)
    if check and not isinstance(model, SequenceClassifier):
        _check_forward(model, rnn, program)
    return program


def run_program(program: Program, x: Tensor, lengths: Tensor | None = None) -> Tensor:
    """Concrete logits of ``program`` on ``x (B, T, d)``: the Point-domain execution."""
    B, T, _ = x.shape
    lengths = torch.full((B,), T, device=x.device) if lengths is None else lengths
    h = unroll(program, [Point(x[:, t]) for t in range(T)], lengths, Point)
    return h.affine(program.head_weight, program.head_bias).value


def _check_forward(model: nn.Module, rnn: nn.Module, program: Program) -> None:
    param = program.head_weight
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, program.input_size, generator=gen).to(dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x if rnn.batch_first else x.transpose(0, 1))
            expected = run_program(program, x)
    except Exception as exc:  # the user's forward failed on a plain (B, T, d) batch
        raise UnsupportedModelError(f"{type(model).__name__}.forward could not be checked on a (B, T, d) input: {exc}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or out.shape != expected.shape or not torch.allclose(out, expected, atol=1e-4, rtol=1e-4):
        raise UnsupportedModelError(
            f"{type(model).__name__}.forward does not compute linear(last hidden state of the top layer); "
            "wrap the recurrent layer and the linear head in rnnguard.SequenceClassifier")


def validate_program_inputs(program: Program, x: Tensor) -> None:
    """Shared shape check used by certify and attacks."""
    if x.shape[-1] != program.input_size:
        raise InvalidInputError(f"x has {x.shape[-1]} features per frame but the model expects {program.input_size}")
