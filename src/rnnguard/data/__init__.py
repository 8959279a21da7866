"""Offline-first data layer: text datasets embedded with fixed, raw GloVe vectors.

The threat model perturbs word embeddings, so models receive float frames
``(N, T, dim)`` rather than token ids. See ``docs/data.md``.
"""

from .embeddings import GLOVE_6B_URL, OOV_RANGE, GloVe, embed_tokens, load_glove, oov_vector
from .errors import DataFormatError
from .paths import ENV_VAR, download, resolve_data_root, user_cache_dir
from .text import (
    DATASETS,
    KAGGLE_LABELS,
    SPLITS,
    DatasetName,
    Example,
    TensorSplit,
    TextClassificationData,
    load_rt,
    load_text_dataset,
    load_text_splits,
    load_toxic,
    load_yelp,
    split_dataset,
    split_indices,
    tokenize,
)

__all__ = [
    "DATASETS",
    "DataFormatError",
    "DatasetName",
    "ENV_VAR",
    "Example",
    "GLOVE_6B_URL",
    "GloVe",
    "KAGGLE_LABELS",
    "OOV_RANGE",
    "SPLITS",
    "TensorSplit",
    "TextClassificationData",
    "download",
    "embed_tokens",
    "load_glove",
    "load_rt",
    "load_text_dataset",
    "load_text_splits",
    "load_toxic",
    "load_yelp",
    "oov_vector",
    "resolve_data_root",
    "split_dataset",
    "split_indices",
    "tokenize",
    "user_cache_dir",
]
