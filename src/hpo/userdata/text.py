"""Texts to token ids, the way ``keras.datasets.imdb`` encodes them, with a vocabulary built on the training part
only.

- Words: the text lowercased, runs of letters and digits (an inner apostrophe kept: "don't"); everything else
  separates words.
- Ids: 0 = padding, 1 = start (each sequence begins with it), 2 = out of vocabulary, 3.. the training part's words
  by falling frequency (ties: alphabetical), as many as fit below ``vocab_size``. A word not in the vocabulary (too
  rare, or seen only in the test part) becomes 2.
- Every sequence is cut or padded to ``sequence_length`` like ``keras.utils.pad_sequences`` with its defaults:
  long sequences keep their last tokens, short ones get zeros in front. No text is dropped.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["PAD", "START", "OOV", "INDEX_FROM", "DEFAULT_VOCAB_SIZE", "MAX_DEFAULT_LENGTH", "WORD_PATTERN", "words",
           "build_vocabulary", "default_sequence_length", "encode", "Tokenized", "tokenize"]

PAD, START, OOV, INDEX_FROM = 0, 1, 2, 3
DEFAULT_VOCAB_SIZE = 10_000
#: the default sequence_length is the 95th percentile of the training texts' lengths, at most this
MAX_DEFAULT_LENGTH = 500
WORD_PATTERN = r"[^\W_]+(?:'[^\W_]+)*"
_WORD = re.compile(WORD_PATTERN)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def build_vocabulary(token_lists: Sequence[list[str]], vocab_size: int) -> list[str]:
    """The words that get ids (id = INDEX_FROM + position): the most frequent ones of ``token_lists``, at most
    ``vocab_size - INDEX_FROM`` of them."""
    counts = Counter(w for tokens in token_lists for w in tokens)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [w for w, _ in ranked[: max(0, vocab_size - INDEX_FROM)]]


def default_sequence_length(token_lists: Sequence[list[str]]) -> int:
    """95th percentile of the lengths (start token included), rounded up, at most :data:`MAX_DEFAULT_LENGTH`."""
    lengths = np.array([len(t) + 1 for t in token_lists], dtype=np.float64)
    return int(min(MAX_DEFAULT_LENGTH, max(1, math.ceil(float(np.percentile(lengths, 95))))))


def encode(token_lists: Sequence[list[str]], vocabulary: list[str], sequence_length: int) -> np.ndarray:
    index = {w: i + INDEX_FROM for i, w in enumerate(vocabulary)}
    out = np.zeros((len(token_lists), sequence_length), dtype=np.int32)
    for row, tokens in enumerate(token_lists):
        ids = [START] + [index.get(w, OOV) for w in tokens]
        ids = ids[-sequence_length:]  # truncating='pre': keep the last tokens
        out[row, sequence_length - len(ids):] = ids  # padding='pre': zeros in front
    return out


class Tokenized:
    """Token ids of the training and test texts, and what encoded them (for the stored meta data)."""

    def __init__(self, x_train: np.ndarray, x_test: np.ndarray | None, vocabulary: list[str],
                 sequence_length: int) -> None:
        self.x_train, self.x_test = x_train, x_test
        self.vocabulary, self.sequence_length = vocabulary, sequence_length
        #: every id is below it (the words found, or fewer when vocab_size cut them)
        self.vocab_size = INDEX_FROM + len(vocabulary)

    def meta(self) -> dict:
        return {"sequence_length": self.sequence_length,
                "tokenizer": {"lowercase": True, "word_pattern": WORD_PATTERN, "pad": PAD, "start": START,
                              "oov": OOV, "index_from": INDEX_FROM, "padding": "pre", "truncating": "pre",
                              "vocabulary_from": "training part only"},
                "vocabulary": self.vocabulary}


def tokenize(train_texts: Sequence[str], test_texts: Sequence[str] | None, *, vocab_size: int | None,
             sequence_length: int | None) -> Tokenized:
    """Encode the texts with a vocabulary (and default length) taken from ``train_texts`` only."""
    train_tokens = [words(t) for t in train_texts]
    vocabulary = build_vocabulary(train_tokens, vocab_size or DEFAULT_VOCAB_SIZE)
    length = sequence_length or default_sequence_length(train_tokens)
    x_test = None
    if test_texts is not None:
        x_test = encode([words(t) for t in test_texts], vocabulary, length)
    return Tokenized(encode(train_tokens, vocabulary, length), x_test, vocabulary, length)
