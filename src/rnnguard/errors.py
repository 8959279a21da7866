"""Typed errors raised at rnnguard's public boundary (never a traceback from deep inside)."""

from __future__ import annotations


class RnnGuardError(Exception):
    """Base class of every error rnnguard raises on purpose."""


class InvalidInputError(RnnGuardError, ValueError):
    """Inputs, labels, lengths or a perturbation that cannot be certified as given."""


class UnsupportedModelError(RnnGuardError, TypeError):
    """A model (or one of its submodules) that the lowering step cannot turn into a cell program."""


class UnknownNameError(RnnGuardError, KeyError):
    """A domain, relaxation, norm or model kind name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""
