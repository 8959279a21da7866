"""rnnguard: sound robustness certification for recurrent neural networks."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Zonotope generators are large, short-lived CPU tensors; first-touch page faults dominated
# certification time.  PyTorch's CPU allocator backs large allocations with transparent huge
# pages when this is set (read lazily on first use; an explicit user setting wins).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from rnnguard.attacks import APGD, FGSM, PGD, Attack, AttackResult, Ensemble, default_ensemble
from rnnguard.certify import CertificationResult, certify
from rnnguard.errors import InvalidInputError, RnnGuardError, UnknownNameError, UnsupportedModelError
from rnnguard.models import SequenceClassifier
from rnnguard.perturbations import AllFrames, Frames, LpBall, OneFrame, Perturbation

__all__ = [
    "__version__",
    "certify",
    "CertificationResult",
    "Perturbation",
    "LpBall",
    "AllFrames",
    "OneFrame",
    "Frames",
    "SequenceClassifier",
    "Attack",
    "AttackResult",
    "FGSM",
    "PGD",
    "APGD",
    "Ensemble",
    "default_ensemble",
    "RnnGuardError",
    "InvalidInputError",
    "UnsupportedModelError",
    "UnknownNameError",
]
