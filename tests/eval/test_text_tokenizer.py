"""Word-level tokenizer: exact vocabulary ids, framing, determinism, save/load round trip."""
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from eval.text_tokenizer import SPECIAL_TOKENS, build_word_level_tokenizer, count_words

TEXTS = ["The movie was good, not bad!", "the food was bad", "Food was GOOD"]
# Counts: was 3, bad 2, food 2, good 2, the 2, then !, ",", movie, not (1 each, alphabetical).
EXPECTED_VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4,
                  "was": 5, "bad": 6, "food": 7, "good": 8, "the": 9,
                  "!": 10, ",": 11, "movie": 12, "not": 13}


def test_vocabulary_ids_are_frequency_then_alphabetical():
    tokenizer = build_word_level_tokenizer(TEXTS)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.get_vocab() == EXPECTED_VOCAB
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tokenizer.pad_token_id == 0 and tokenizer.unk_token_id == 1
    assert tokenizer.cls_token_id == 2 and tokenizer.sep_token_id == 3 and tokenizer.mask_token_id == 4


def test_same_texts_give_same_ids_in_any_order():
    first = build_word_level_tokenizer(TEXTS).get_vocab()
    assert build_word_level_tokenizer(TEXTS).get_vocab() == first
    assert build_word_level_tokenizer(list(reversed(TEXTS))).get_vocab() == first


def test_single_and_pair_framing_with_unknown_words():
    tokenizer = build_word_level_tokenizer(TEXTS)
    single = tokenizer("The MOVIE was great")
    assert single["input_ids"] == [2, 9, 12, 5, 1, 3]
    assert single["token_type_ids"] == [0] * 6
    pair = tokenizer("food was good", "not bad")
    assert pair["input_ids"] == [2, 7, 5, 8, 3, 13, 6, 3]
    assert pair["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1, 1]
    assert pair["attention_mask"] == [1] * 8


def test_padding_and_truncation():
    tokenizer = build_word_level_tokenizer(TEXTS)
    batch = tokenizer(["bad", "the food was good"], padding=True)
    assert batch["input_ids"] == [[2, 6, 3, 0, 0, 0], [2, 9, 7, 5, 8, 3]]
    assert batch["attention_mask"] == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert tokenizer("the food was good", truncation=True, max_length=4)["input_ids"] == [2, 9, 7, 3]


def test_case_kept_without_lowercase():
    tokenizer = build_word_level_tokenizer(["Good good"], lowercase=False)
    assert tokenizer.get_vocab() == {**{t: i for i, t in enumerate(SPECIAL_TOKENS)}, "Good": 5, "good": 6}
    assert tokenizer("GOOD good")["input_ids"] == [2, 1, 6, 3]
    assert count_words(["Good good"], lowercase=False) == {"Good": 1, "good": 1}


def test_vocab_size_and_min_frequency():
    capped = build_word_level_tokenizer(TEXTS, vocab_size=8)
    assert capped.get_vocab() == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4,
                                  "was": 5, "bad": 6, "food": 7}
    frequent = build_word_level_tokenizer(TEXTS, min_frequency=2)
    assert sorted(frequent.get_vocab(), key=frequent.get_vocab().get)[5:] == ["was", "bad", "food", "good", "the"]
    assert frequent("movie")["input_ids"] == [2, 1, 3]


def test_save_and_load_round_trip(tmp_path):
    tokenizer = build_word_level_tokenizer(TEXTS)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == EXPECTED_VOCAB
    for args in (("The movie was great",), ("food was good", "not bad")):
        assert loaded(*args) == tokenizer(*args)
    assert loaded.pad_token == "[PAD]" and loaded.pad_token_id == 0
    ids = loaded("The food was good, not bad")["input_ids"]
    assert loaded.decode(ids, skip_special_tokens=True) == "the food was good , not bad"


def test_errors():
    with pytest.raises(ValueError, match="vocab_size=5 leaves no room"):
        build_word_level_tokenizer(TEXTS, vocab_size=5)
    with pytest.raises(ValueError, match="min_frequency=0 must be >= 1"):
        build_word_level_tokenizer(TEXTS, min_frequency=0)
    with pytest.raises(ValueError, match="got no words"):
        build_word_level_tokenizer(["a"], min_frequency=2)
    with pytest.raises(ValueError, match="needs strings, got NoneType"):
        build_word_level_tokenizer(["a", None])


def test_token_type_ids_only_when_asked():
    tokenizer = build_word_level_tokenizer(TEXTS, token_type_ids=False)
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert tokenizer("food was good", "not bad") == {"input_ids": [2, 7, 5, 8, 3, 13, 6, 3], "attention_mask": [1] * 8}
    assert build_word_level_tokenizer(TEXTS).model_input_names == ["input_ids", "token_type_ids", "attention_mask"]


def test_uses_token_type_ids_follows_the_type_vocabulary():
    from eval.model_configs import get_model_spec
    from eval.text_tokenizer import uses_token_type_ids

    assert {name: uses_token_type_ids(get_model_spec(name).builtin_config())
            for name in ("bert-tiny", "bert", "roberta", "gpt2", "gpt2-medium")} == \
        {"bert-tiny": True, "bert": True, "roberta": False, "gpt2": False, "gpt2-medium": False}


PAIR_TRAIN = {"sentence1": ["the food was good", "bad movie"], "sentence2": ["not bad", "the food"]}


@pytest.mark.parametrize("model_type, overrides, names", [
    ("bert-tiny", None, ["input_ids", "token_type_ids", "attention_mask"]),
    ("bert-tiny", "type_vocab_size=1", ["input_ids", "attention_mask"]),  # one type: nothing to tell apart
    ("roberta", None, ["input_ids", "attention_mask"]),  # type_vocab_size 1: a 1 would index past its table
    ("roberta", "type_vocab_size=2", ["input_ids", "token_type_ids", "attention_mask"]),
    ("gpt2", None, ["input_ids", "attention_mask"]),  # no token types: it would add wte(type id) everywhere
])
def test_a_from_scratch_run_gets_token_type_ids_only_for_models_that_embed_them(model_type, overrides, names):
    import argparse

    from eval.run_setup import _text_processor
    from eval.tasks import get_task

    args = argparse.Namespace(model_type=model_type, from_scratch=True, config_overrides=overrides)
    tokenizer = _text_processor(args, PAIR_TRAIN, get_task("rte"), None)
    assert tokenizer.model_input_names == names
    encoded = tokenizer("food was good", "not bad")
    assert list(encoded) == names and encoded["input_ids"] == [2, 6, 11, 8, 3, 10, 5, 3]
    if "token_type_ids" in names:
        assert encoded["token_type_ids"] == [0, 0, 0, 0, 0, 1, 1, 1]


def _pair_csv(folder):
    folder.mkdir()
    rows = ["sentence1,sentence2,label"] + [
        f"{'good fine nice' if i % 2 else 'bad awful poor'} movie {i},{'it was' if i % 3 else 'so it is'} {i},{i % 2}"
        for i in range(40)]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    (folder / "dev.csv").write_text("\n".join(rows[:21]) + "\n")
    return ["--train_file", str(folder / "train.csv"), "--validation_file", str(folder / "dev.csv")]


@pytest.mark.parametrize("model_type, overrides, saved_names", [
    ("roberta", "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64",
     ["input_ids", "attention_mask"]),
    ("gpt2", "n_layer=1,n_embd=32,n_head=2", ["input_ids", "attention_mask"]),
    ("bert-tiny", "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64",
     ["input_ids", "token_type_ids", "attention_mask"]),
])
def test_sentence_pair_runs_from_scratch(tmp_path, model_type, overrides, saved_names):
    """A RoBERTa pair task used to crash (IndexError: token type 1 past its single-type table)."""
    import json

    from eval.eval_run import main

    code = main(["--task", "rte", "--model_type", model_type, "--from_scratch", "--config_overrides", overrides,
                 *_pair_csv(tmp_path / "data"), "--weight_bits", "8", "--activation_bits", "8", "--max_steps", "2",
                 "--train_batch_size", "8", "--device", "cpu", "--report_to", "none", "--exp_name", "pair",
                 "--output_root_dir", str(tmp_path / "out")])
    results = json.loads((tmp_path / "out" / "rte" / "pair" / "results.json").read_text())
    assert code == 0 and results["status"] == "completed", results["error"]
    saved = AutoTokenizer.from_pretrained(tmp_path / "out" / "rte" / "pair" / "final_model")
    assert saved.model_input_names == saved_names  # what the run fed, and what a rebuild feeds
