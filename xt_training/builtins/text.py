"""Text classification without downloads: a word tokenizer built from the training texts, and ``synthetic-text``.

:class:`WordTokenizer` follows the Hugging Face tokenizer calls a training script uses --
``tokenizer(texts, padding=True, return_tensors='pt')`` gives ``{'input_ids', 'attention_mask'}``,
``save_pretrained(dir)`` / ``from_pretrained(dir)`` -- so a data set can swap it for a real one without
changing the model or the loop. Batches are ``(inputs, labels)`` with ``inputs`` that dict, fed to the model
by :func:`text_forward` as ``model(**inputs)``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError
from ..registry import Data
from ..text import TextCollate, TextDataset, text_forward
from .datasets import _check, _split_sizes

__all__ = ["WordTokenizer", "TextDataset", "TextCollate", "text_forward", "synthetic_text"]

_WORD = re.compile(r"\w+|[^\w\s]")


class WordTokenizer:
    """Words (and punctuation marks) to ids: 0 is padding, 1 unknown words, then the vocabulary by frequency.

    Build it from training texts only (:meth:`from_texts`), so validation and test words it never saw
    map to the unknown id as they would in use.
    """

    pad_token, unk_token = "[PAD]", "[UNK]"
    pad_token_id, unk_token_id = 0, 1

    def __init__(self, vocab: Sequence[str], *, lowercase: bool = True, max_length: int | None = None):
        if list(vocab[:2]) != [self.pad_token, self.unk_token]:
            raise ConfigError(f"a vocabulary starts with {self.pad_token!r} and {self.unk_token!r}")
        self.vocab = list(vocab)
        self.ids = {word: i for i, word in enumerate(self.vocab)}
        self.lowercase = lowercase
        self.max_length = max_length

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        *,
        min_freq: int = 1,
        max_size: int | None = None,
        lowercase: bool = True,
        max_length: int | None = None,
    ) -> WordTokenizer:
        """The words of ``texts`` seen at least ``min_freq`` times, the ``max_size`` most frequent (ties: first seen)."""
        counts = Counter(word for text in texts for word in _words(text, lowercase))
        words = [w for w, n in counts.most_common(max_size) if n >= min_freq]
        return cls([cls.pad_token, cls.unk_token, *words], lowercase=lowercase, max_length=max_length)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """The ids of one text's words (truncated to ``max_length``)."""
        ids = [self.ids.get(word, self.unk_token_id) for word in _words(text, self.lowercase)]
        return ids[: self.max_length] if self.max_length else ids

    def __call__(
        self, texts: str | Sequence[str], *, padding: bool = True, return_tensors: str = "pt"
    ) -> dict[str, torch.Tensor]:
        """``{'input_ids', 'attention_mask'}``, each ``(N, T)``, padded on the right to the longest text."""
        if return_tensors != "pt" or not padding:
            raise ConfigError("WordTokenizer returns padded torch tensors: padding=True, return_tensors='pt'")
        encoded = [self.encode(t) for t in ([texts] if isinstance(texts, str) else texts)]
        width = max((len(ids) for ids in encoded), default=0) or 1
        input_ids = torch.full((len(encoded), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        attention_mask[:, 0] = 1  # an empty text still has one (padding) step for the model to read
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write ``tokenizer_config.json`` (naming this class, as Hugging Face's does) and ``vocab.json``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": f"{type(self).__module__}:{type(self).__qualname__}",
            "lowercase": self.lowercase,
            "max_length": self.max_length,
        }
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (path / "vocab.json").write_text(json.dumps(self.vocab) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> WordTokenizer:
        """The tokenizer :meth:`save_pretrained` wrote."""
        path = Path(directory)
        config = json.loads((path / "tokenizer_config.json").read_text())
        vocab = json.loads((path / "vocab.json").read_text())
        return cls(vocab, lowercase=config["lowercase"], max_length=config["max_length"])


def _words(text: str, lowercase: bool) -> list[str]:
    return _WORD.findall(text.lower() if lowercase else text)


# Topic words decide the label; filler words carry no information.
TOPICS = {
    "sports": "goal match team score player coach league stadium referee season".split(),
    "cooking": "recipe oven flour sauce garlic bake simmer spice kitchen dessert".split(),
    "music": "guitar melody concert album chorus drums lyrics band rhythm singer".split(),
    "space": "orbit rocket planet galaxy comet telescope astronaut moon launch star".split(),
}
FILLER = (
    "the a an of and to in on with for at by from this that it is was were be very really quite "
    "today yesterday we they you people some many new old great long short about after before"
).split()


def synthetic_text(
    *,
    n_samples: int = 1200,
    num_classes: int = 2,
    min_words: int = 5,
    max_words: int = 14,
    distractors: float = 0.3,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    batch_size: int = 32,
    seed: int = 0,
) -> Data:
    """Generated sentences about one of ``num_classes`` topics (sports, cooking, music, space).

    Each sentence mixes filler words with two or three words of its topic and, with probability
    ``distractors``, one word of another topic; the label is the topic. A :class:`WordTokenizer` is built
    from the training split; batches are ``({'input_ids', 'attention_mask'}, labels)`` padded per batch,
    fed by :func:`text_forward`. The tokenizer is in ``Data.tokenizer`` (``xt run`` saves it with the run).

    Args:
        n_samples: examples generated, before the split.
        num_classes: topics, one label each.
        min_words: the fewest words of a sentence.
        max_words: the most words of a sentence.
        distractors: the probability of one word of another topic.
        val_fraction: the share of the examples in the validation split.
        test_fraction: the share of the examples in the test split.
        batch_size: examples per batch, in every split.
        seed: seeds the generated data (not the run's ``--seed``: every run sees the same data).
    """
    _check(batch_size, val_fraction, test_fraction, n_samples)
    topics = list(TOPICS)
    if not 2 <= num_classes <= len(topics) or not 3 <= min_words <= max_words:
        raise ConfigError(
            f"num_classes must be 2 to {len(topics)} and 3 <= min_words <= max_words, got "
            f"num_classes={num_classes}, min_words={min_words}, max_words={max_words}"
        )
    g = torch.Generator().manual_seed(seed)

    def pick(words: list[str]) -> str:
        return words[int(torch.randint(0, len(words), (1,), generator=g))]

    texts, labels = [], []
    for _ in range(n_samples):
        label = int(torch.randint(0, num_classes, (1,), generator=g))
        length = int(torch.randint(min_words, max_words + 1, (1,), generator=g))
        words = [pick(FILLER) for _ in range(length)]
        keywords = [pick(TOPICS[topics[label]]) for _ in range(int(torch.randint(2, 4, (1,), generator=g)))]
        if float(torch.rand(1, generator=g)) < distractors:
            other = (label + int(torch.randint(1, num_classes, (1,), generator=g))) % num_classes
            keywords.append(pick(TOPICS[topics[other]]))
        for word in keywords:
            words.insert(int(torch.randint(0, len(words) + 1, (1,), generator=g)), word)
        texts.append(" ".join(words))
        labels.append(label)
    n_train, n_val, _ = _split_sizes(n_samples, val_fraction, test_fraction)
    tokenizer = WordTokenizer.from_texts(texts[:n_train])
    collate = TextCollate(tokenizer)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n_samples)}
    loaders = {
        split: DataLoader(
            TextDataset(texts[a:b], labels[a:b]), batch_size, shuffle=split == "train", collate_fn=collate
        )
        for split, (a, b) in bounds.items()
        if b > a
    }
    info = {"num_classes": num_classes, "vocab_size": len(tokenizer), "classes": topics[:num_classes]}
    return Data(
        loaders,
        info,
        loss="cross-entropy",
        metrics=["accuracy"],
        forward_fn=text_forward,
        tokenizer=tokenizer,
    )
