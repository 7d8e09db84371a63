"""A word-level tokenizer built from the training texts, for text models trained from scratch.

Pretrained checkpoints bring their own tokenizer; a from-scratch model (built-in task or local
files) gets this one instead: one id per word seen in the training texts, BERT-style special
tokens and `[CLS] a [SEP] (b [SEP])` framing, so BERT-like models consume it unchanged. It is
built with the `tokenizers` library and wrapped as a `PreTrainedTokenizerFast`, so it pads,
truncates and round-trips through `save_pretrained` / `from_pretrained` like any HF tokenizer.

token_type_ids (0 for the first text, 1 for the second) are produced only for models that embed
token types (`uses_token_type_ids`: BERT), as their hub tokenizers do; RoBERTa (one token type:
a 1 would index past its embedding table) and GPT-2 (no token type embeddings: it would add the
embedding of token id 0 at every position) get input_ids and attention_mask, as from the hub.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
# Fixed ids 0..4, in this order, whatever the texts.
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)


def _build_backend(vocab: dict[str, int], lowercase: bool) -> Tokenizer:
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    # Whitespace() splits on `\w+|[^\w\s]+`: words, and runs of punctuation as their own tokens.
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    cls_id, sep_id = vocab[CLS_TOKEN], vocab[SEP_TOKEN]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS_TOKEN}:0 $A:0 {SEP_TOKEN}:0",
        pair=f"{CLS_TOKEN}:0 $A:0 {SEP_TOKEN}:0 $B:1 {SEP_TOKEN}:1",
        special_tokens=[(CLS_TOKEN, cls_id), (SEP_TOKEN, sep_id)],
    )
    return backend


def count_words(texts: Iterable[str], *, lowercase: bool = True) -> Counter[str]:
    """Word counts after the tokenizer's own normalisation and pre-tokenisation."""
    normalizer = normalizers.Lowercase() if lowercase else None
    pre_tokenizer = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"build_word_level_tokenizer needs strings, got {type(text).__name__} ({text!r}); "
                             "drop or fill missing text values before building the vocabulary")
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(text))
    return counts


def uses_token_type_ids(config: Any) -> bool:
    """Whether a model of this config embeds token types, so its batches should carry
    token_type_ids: type_vocab_size > 1 (BERT's 2; not RoBERTa's 1, nor GPT-2, which has no such
    field and would read token type ids as word ids)."""
    return getattr(config, "type_vocab_size", 0) > 1


def build_word_level_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int | None = None,
    min_frequency: int = 1,
    lowercase: bool = True,
    token_type_ids: bool = True,
) -> PreTrainedTokenizerFast:
    """Word-level tokenizer whose vocabulary is the words of `texts`.

    Ids: the five special tokens first ([PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4), then
    words by decreasing count, ties broken alphabetically, so the same texts always give the same
    ids. `vocab_size` caps the total (special tokens included); words seen fewer than
    `min_frequency` times map to [UNK]. `token_type_ids`: whether encodings include them (its
    `model_input_names`); pass `uses_token_type_ids(model_config)`.
    """
    if vocab_size is not None and vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} leaves no room for words next to the "
                         f"{len(SPECIAL_TOKENS)} special tokens; pass vocab_size > {len(SPECIAL_TOKENS)} or None")
    if min_frequency < 1:
        raise ValueError(f"min_frequency={min_frequency} must be >= 1 (1 keeps every word seen)")
    counts = count_words(texts, lowercase=lowercase)
    words = sorted((w for w, c in counts.items() if c >= min_frequency and w not in SPECIAL_TOKENS),
                   key=lambda w: (-counts[w], w))
    if not words:
        raise ValueError("build_word_level_tokenizer got no words (empty texts, or min_frequency="
                         f"{min_frequency} removed them all); pass the training texts")
    if vocab_size is not None:
        words = words[: vocab_size - len(SPECIAL_TOKENS)]
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({word: len(SPECIAL_TOKENS) + i for i, word in enumerate(words)})
    return PreTrainedTokenizerFast(
        tokenizer_object=_build_backend(vocab, lowercase),
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        cls_token=CLS_TOKEN,
        sep_token=SEP_TOKEN,
        mask_token=MASK_TOKEN,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"] if token_type_ids
        else ["input_ids", "attention_mask"],
    )
