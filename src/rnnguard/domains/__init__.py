"""Abstract domains and the registry that turns input regions into abstract values.

``DOMAINS[name].start(regions)`` returns one abstract value per time step (shape ``(R, d)``) and
a function making exactly known values (initial states) in the same symbol tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from rnnguard.domains.base import AbstractValue
from rnnguard.domains.box import Box
from rnnguard.domains.intersection import InterZono
from rnnguard.domains.point import Point
from rnnguard.domains.zonotope import SymbolTable, Zonotope
from rnnguard.errors import UnknownNameError
from rnnguard.perturbations import Regions


def input_zonotopes(regions: Regions, symbols: SymbolTable) -> list[Zonotope]:
    """One zonotope per frame with a fresh symbol per (perturbed frame, feature).

    Inside a region the k-th perturbed frame uses symbol block ``k`` ("slot"), so the one-frame
    threat (one perturbed frame per region) needs d symbols, not T*d, while distinct frames of
    the same region always get distinct symbols."""
    lower, upper, masks = regions.lower, regions.upper, regions.masks
    R, T, d = lower.shape
    center, radius = (upper + lower) / 2, (upper - lower) / 2
    slot = torch.cumsum(masks.long(), dim=1) - 1  # (R, T), meaningful where masks
    n_slots = int(masks.sum(dim=1).max().item()) if R and T else 0
    slot_ids = [symbols.new_block() for _ in range(n_slots)]
    eye = torch.eye(d, dtype=lower.dtype, device=lower.device)
    values = []
    for t in range(T):
        used = torch.unique(slot[:, t][masks[:, t]]).tolist()
        blocks = tuple((slot_ids[s], d) for s in used)
        if used:
            onehot = (slot[:, t, None] == torch.tensor(used, device=lower.device)[None, :]) & masks[:, t, None]
            gens = onehot.to(lower.dtype)[:, :, None, None] * (eye * radius[:, t, None, :])[:, None]
            gens = gens.reshape(R, len(used) * d, d)
        else:
            gens = lower.new_zeros(R, 0, d)
        values.append(Zonotope(center[:, t], gens, blocks, symbols))
    return values


Start = Callable[[Regions], tuple[list[AbstractValue], Callable[[Tensor], AbstractValue]]]


@dataclass(frozen=True)
class Domain:
    """A registered domain.  ``start(regions)`` returns the per-frame input values and a function
    making exactly known values (initial states) that share the same noise-symbol tables."""

    name: str
    start: Start
    description: str


def _start_box(regions: Regions) -> tuple[list[AbstractValue], Callable[[Tensor], AbstractValue]]:
    frames = [Box(regions.lower[:, t], regions.upper[:, t]) for t in range(regions.lower.shape[1])]
    return frames, lambda x: Box(x, x)


def _start_zonotope(regions: Regions) -> tuple[list[AbstractValue], Callable[[Tensor], AbstractValue]]:
    symbols = SymbolTable()
    return input_zonotopes(regions, symbols), lambda x: Zonotope.point(x, symbols)


def _start_interzono(regions: Regions) -> tuple[list[AbstractValue], Callable[[Tensor], AbstractValue]]:
    main, support = SymbolTable(), SymbolTable()
    frames = [InterZono(m, s) for m, s in zip(input_zonotopes(regions, main), input_zonotopes(regions, support))]
    return frames, lambda x: InterZono(Zonotope.point(x, main), Zonotope.point(x, support))


DOMAINS: dict[str, Domain] = {
    "box": Domain("box", _start_box, "interval bound propagation"),
    "zonotope": Domain("zonotope", _start_zonotope, "Cert-RNN zonotopes with parallel-plane transformers"),
    "interzono": Domain("interzono", _start_interzono, "RNN-Guard InterZono: main zonotope ∩ support box-zonotope"),
}


def get_domain(name: str) -> Domain:
    try:
        return DOMAINS[name]
    except KeyError:
        raise UnknownNameError(f"unknown domain {name!r}; choose one of {sorted(DOMAINS)}") from None


__all__ = ["DOMAINS", "Domain", "get_domain", "Box", "Zonotope", "InterZono", "Point", "SymbolTable", "input_zonotopes"]
