"""Stage 1, ``tokenizer``: a CLIP BPE trained on the world's captions with the ``tokenizers`` library.

Its base vocabulary is every byte with and without the end-of-word mark, so any word (a trigger never
seen in captions included) splits into known pieces.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from cat_adapter.io import atomic_dir
from cat_adapter.toy.build.common import BuildContext, WorldPool, step_rng, world_vocabulary
from cat_adapter.toy.world import caption_named

SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def _world_captions(recipe: dict) -> list[str]:
    pool = WorldPool(recipe["seed"], recipe["pool_size"])
    rng = step_rng(recipe["seed"], "tokenizer", 0)
    return [caption_named(pool.scene(rng.randrange(pool.size)), rng, name_all=rng.random() < 0.5)[0]
            for _ in range(recipe["tokenizer"]["captions"])]


def _train_bpe(captions: list[str], vocab_size: int, chars: list[str]) -> dict:
    """The trained BPE model (``vocab`` and ``merges``), normalised and pre-tokenised like CLIPTokenizer."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import CLIPTokenizer

    # The same normalisation and pre-tokenisation as CLIPTokenizer, so the merges fit what it will see.
    probe = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[])
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = probe.backend_tokenizer.normalizer
    tok.pre_tokenizer = probe.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=chars,
                                  end_of_word_suffix="</w>", show_progress=False, min_frequency=2)
    tok.train_from_iterator(captions, trainer)
    return json.loads(tok.to_str())["model"]


def train_tokenizer(out: Path, recipe: dict) -> dict:
    """A CLIPTokenizer whose merges are learned on world captions and whose base is every byte."""
    from transformers import CLIPTokenizer

    from cat_adapter.data.bpe import bytes_to_unicode

    cfg = recipe["tokenizer"]
    chars = list(bytes_to_unicode().values())
    model = _train_bpe(_world_captions(recipe), cfg["vocab_size"], chars)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    learned = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    # Base vocabulary first (both forms of every byte), then the learned merged tokens in merge order.
    vocab: dict[str, int] = {}
    for token in SPECIAL + chars + [c + "</w>" for c in chars] + [t for t, _ in learned]:
        vocab.setdefault(token, len(vocab))
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    clip_tok = CLIPTokenizer(vocab=str(out / "vocab.json"), merges=str(out / "merges.txt"),
                             model_max_length=cfg["model_max_length"], pad_token="<|endoftext|>")
    (out / "vocab.json").unlink()
    (out / "merges.txt").unlink()
    clip_tok.save_pretrained(out)
    return {"vocab_size": len(clip_tok), "merges": len(merges),
            "world_words_single_token": sum(len(clip_tok.tokenize(w)) == 1 for w in world_vocabulary()),
            "world_words": len(world_vocabulary())}


def load_tokenizer(path: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path))


def tokenizer_stage(ctx: BuildContext) -> None:
    """Train the tokenizer into ``state/tokenizer`` (it has no steps: ``stop_after`` does not shorten it)."""
    t0 = time.time()
    with atomic_dir(ctx.state / "tokenizer") as tmp:
        ctx.progress["tokenizer"] = train_tokenizer(tmp, ctx.recipe)
    ctx.done("tokenizer", t0)
    ctx.log(f"[tokenizer] {ctx.progress['tokenizer']}")
    return None
