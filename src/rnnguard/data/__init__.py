"""Offline-first data layer: text datasets embedded with fixed, raw GloVe vectors, and
MNIST read as a sequence of pixel frames.

The threat model perturbs word embeddings, so models receive float frames
``(N, T, dim)`` rather than token ids. See ``docs/data.md``.
"""

from .embeddings import GLOVE_6B_URL, OOV_RANGE, GloVe, embed_tokens, load_glove, oov_vector
from .errors import DataFormatError
from .mnist import (
    MNIST_FILES,
    MNIST_MIRRORS,
    correctly_classified_subset,
    frames_to_images,
    images_to_frames,
    load_mnist,
    parse_idx,
    read_idx,
    sequence_mnist,
    valid_frame_counts,
)
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
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "OOV_RANGE",
    "SPLITS",
    "TensorSplit",
    "TextClassificationData",
    "correctly_classified_subset",
    "download",
    "embed_tokens",
    "frames_to_images",
    "images_to_frames",
    "load_glove",
    "load_mnist",
    "load_rt",
    "load_text_dataset",
    "load_text_splits",
    "load_toxic",
    "load_yelp",
    "oov_vector",
    "parse_idx",
    "read_idx",
    "resolve_data_root",
    "sequence_mnist",
    "split_dataset",
    "split_indices",
    "tokenize",
    "user_cache_dir",
    "valid_frame_counts",
]
