"""rnnguard: sound robustness certification for recurrent neural networks."""

from __future__ import annotations

__version__ = "0.1.0"

from rnnguard.errors import InvalidInputError, RnnGuardError, UnknownNameError, UnsupportedModelError
from rnnguard.perturbations import AllFrames, Frames, LpBall, OneFrame, Perturbation
from rnnguard.models import SequenceClassifier
from rnnguard.certify import CertificationResult, certify

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
    "RnnGuardError",
    "InvalidInputError",
    "UnsupportedModelError",
    "UnknownNameError",
]
