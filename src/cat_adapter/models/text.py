"""What the families' text sides share: trigger rewriting, which prompts can be cached, the tokenizers as they were
before tokens were added, and the token rows Textual Inversion trains (``ExtendedEmbedding``, ``add_token_rows``).

A family's text side (``sd.ClipText``, ``sdxl.DualClipText``, ``flux.ClipT5Text``) subclasses ``TextSide`` and adds
its encoders; one that can train tokens has ``add_tokens`` (its family lists the ``tokens`` feature).
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from typing import Iterator

import torch

from cat_adapter.errors import CatAdapterError
from cat_adapter.models.base import TokenIds

log = logging.getLogger(__name__)


class ExtendedEmbedding(torch.nn.Module):
    """A token embedding with ``n`` new rows after the frozen ones; only the new rows are a Parameter.

    ids >= the base vocabulary size read the new rows. Every other row is the base embedding's own,
    untouched: no optimizer or weight decay can reach it (the failure mode diffusers' TI script
    repairs by copying rows back after each step).
    """

    def __init__(self, base: torch.nn.Embedding, new_rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.new_rows = torch.nn.Parameter(new_rows.detach().float().clone())
        self.num_base = base.num_embeddings
        self.num_embeddings = self.num_base + new_rows.shape[0]
        self.embedding_dim = base.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base.weight, self.new_rows.to(self.base.weight.dtype)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(ids.clamp(max=self.num_base - 1))
        new = ids >= self.num_base
        if not bool(new.any()):
            return out
        extra = self.new_rows.to(out.dtype)[(ids - self.num_base).clamp(min=0)]
        return torch.where(new.unsqueeze(-1), extra, out)


def new_token_names(tok, trigger: str, num_vectors: int) -> tuple[str, list[str]]:
    """``trigger`` and its multi-vector names, or ``<trigger>``'s where the tokenizer has ``trigger``."""
    vocab = tok.get_vocab()
    for token in (trigger, f"<{trigger}>"):
        names = [token] + [f"{token}_{i}" for i in range(1, num_vectors)]
        if not any(n in vocab for n in names):
            return token, names  # add_tokens would return 0 for a token the tokenizer has
    raise CatAdapterError(f"--trigger {trigger}: the tokenizer already has '{trigger}' and '<{trigger}>'; "
                          "choose another trigger for --method ti")


def add_token_rows(tok, encoder, names: list[str], initializer: str, option: str) -> tuple[torch.nn.Parameter, list]:
    """``names`` added to ``tok`` and as new rows of ``encoder``'s embedding, each the mean embedding of
    ``initializer``'s tokens; returns the rows and the new ids."""
    num_vectors = len(names)
    base_tokens = tok(initializer, add_special_tokens=False).input_ids
    if not base_tokens:
        raise CatAdapterError(f"{option} {initializer!r}: encodes to no token; give a word such as the class noun")
    if tok.add_tokens(names) != num_vectors:
        raise CatAdapterError(f"--trigger {names[0]}: the tokenizer did not add {names} as new tokens")
    ids = tok.convert_tokens_to_ids(names)
    emb = encoder.get_input_embeddings()
    if isinstance(emb, ExtendedEmbedding):
        raise CatAdapterError("tokens were already added to this text encoder")
    if ids != list(range(emb.num_embeddings, emb.num_embeddings + num_vectors)):
        raise CatAdapterError(f"--trigger {names[0]}: the tokenizer's new ids {ids} do not follow the text "
                              f"encoder's {emb.num_embeddings} rows; its vocabulary and embedding sizes differ")
    init = emb.weight.detach()[base_tokens].float().mean(0)
    ext = ExtendedEmbedding(emb, init.unsqueeze(0).repeat(num_vectors, 1))
    encoder.set_input_embeddings(ext)
    return ext.new_rows, ids


class TextSide:
    """Prompts -> ``Cond`` for one family; what every family's text side does the same way.

    ``tokenizer_names``: the pipeline's tokenizers, the first being the one whose length limit and token ids
    decide truncation warnings and caching.
    """

    tokenizer_names: tuple[str, ...] = ("tokenizer",)

    def __init__(self, pipe):
        self.pipe = pipe
        self.token_map: dict[str, str] = {}        # trigger -> the token that stands for it (TI)
        self.trainable_ids: set[int] = set()
        self.encoder_trained = False   # text-encoder LoRA: no prompt's embedding is fixed
        self._originals: dict[str, object] | None = None   # the tokenizers before tokens were added

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def encoder(self):
        return self.pipe.text_encoder

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def rewrite(self, prompt: str) -> str:
        """Triggers -> the tokens that stand for them (``sks`` -> ``<sks>`` where the tokenizer knew ``sks``):
        what a prompt given to the pipeline needs (the pipeline expands multi-vector tokens itself)."""
        from cat_adapter.data.prompts import replace_word

        for trigger, token in self.token_map.items():
            if token != trigger:
                prompt = replace_word(prompt, trigger, token)
        return prompt

    def convert(self, prompt: str, tokenizer=None) -> str:
        """``rewrite``, then diffusers' multi-vector expansion (``<sks>`` -> ``<sks> <sks>_1 ...``) exactly as the
        pipeline's ``encode_prompt`` does it: the training encodes prompts as sampling will."""
        prompt = self.rewrite(prompt)
        return self.pipe.maybe_convert_prompt(prompt, tokenizer or self.tokenizer) if self.token_map else prompt

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """The first tokenizer's ids, padded to its length; a warning names each prompt it truncates."""
        converted = [self.convert(p) for p in prompts]
        for p in converted:
            n = len(self.tokenizer(p, truncation=False).input_ids)
            if n > self.max_length:
                log.warning("prompt is %d tokens, truncated to %d: %r", n, self.max_length, p[:80])
        return self.tokenizer(converted, padding="max_length", max_length=self.max_length, truncation=True,
                              return_tensors="pt").input_ids

    def cacheable(self, prompt: str) -> bool:
        """A prompt without a trainable token: its embedding is fixed, so it is encoded once."""
        if self.encoder_trained:
            return False
        if not self.trainable_ids:
            return True
        return not (set(self.tokenize([prompt])[0].tolist()) & self.trainable_ids)

    def token_ids(self, prompts: list[str]) -> TokenIds:
        """Prompts as token ids, to encode in the step (they hold a trainable token)."""
        return TokenIds(self.tokenize(prompts))

    def keep_original_tokenizers(self) -> None:
        """Remember the tokenizers as they are, before tokens are added or loaded (``original_tokens``)."""
        if self._originals is None:
            self._originals = {n: copy.deepcopy(getattr(self.pipe, n)) for n in self.tokenizer_names}

    @contextmanager
    def original_tokens(self) -> Iterator[None]:
        """Within the block prompts are read by the tokenizers as they were before tokens were added."""
        if self._originals is None:
            yield
            return
        trained = {n: getattr(self.pipe, n) for n in self.tokenizer_names}, self.token_map
        for n, tok in self._originals.items():
            setattr(self.pipe, n, tok)
        self.token_map = {}
        try:
            yield
        finally:
            for n, tok in trained[0].items():
                setattr(self.pipe, n, tok)
            self.token_map = trained[1]
