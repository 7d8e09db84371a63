"""Built-in offline tasks: digits split and pixels, synth-sentiment determinism, balance, grammar."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from eval.builtin_tasks import (
    SYNTH_SENTIMENT_SEED, digits_split_indices, generate_synth_sentiment, load_builtin_task,
    load_digits_dataset, load_synth_sentiment, synth_sentiment_label)


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


@pytest.fixture(scope="module")
def synth():
    return load_synth_sentiment()


def test_digits_split_sizes_stratified_and_fixed(digits):
    assert digits["train"].num_rows == 1437 and digits["validation"].num_rows == 360
    train_idx, val_idx = digits_split_indices()
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert np.array_equal(np.union1d(train_idx, val_idx), np.arange(1797))
    again_train, again_val = digits_split_indices()
    assert np.array_equal(train_idx, again_train) and np.array_equal(val_idx, again_val)
    targets = load_digits().target
    per_class = np.bincount(targets, minlength=10)
    val_per_class = np.bincount(np.asarray(digits["validation"]["label"]), minlength=10)
    assert np.all(np.abs(val_per_class - 0.2 * per_class) <= 1)
    assert digits["validation"]["label"][:5] == targets[val_idx[:5]].tolist()


def test_digits_pixels_are_the_sklearn_images_scaled_to_8_bits(digits):
    train_idx, val_idx = digits_split_indices()
    images = load_digits().images
    for split, indices in (("train", train_idx), ("validation", val_idx)):
        for row in (0, 7, len(indices) - 1):
            image = digits[split][row]["image"]
            assert image.mode == "L" and image.size == (8, 8)
            expected = np.round(images[indices[row]] * 255 / 16).astype(np.uint8)
            assert np.array_equal(np.asarray(image), expected)
    assert max(np.asarray(image).max() for image in digits["train"][:50]["image"]) == 255  # 16 -> 255
    assert min(np.asarray(image).min() for image in digits["train"][:50]["image"]) == 0


def test_digits_through_the_vision_path_are_3x32x32_in_range(digits):
    from eval.data import build_data_collator, prepare_vision_datasets
    from eval.tasks import get_task
    from eval.vision_utils import IMAGENET_MEAN, IMAGENET_STD, default_transform_config

    task = get_task("digits")
    ready = prepare_vision_datasets(digits, task, default_transform_config(32))
    batch = build_data_collator(task)([ready["validation"][i] for i in range(16)])
    assert batch["pixel_values"].shape == (16, 3, 32, 32)
    assert batch["labels"].tolist() == list(digits["validation"]["label"][:16])
    # Undo the normalisation: grayscale, so all channels agree, and values lie in [0, 1].
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    unit = batch["pixel_values"] * std + mean
    assert torch.allclose(unit[:, 0], unit[:, 1], atol=1e-6) and torch.allclose(unit[:, 1], unit[:, 2], atol=1e-6)
    assert unit.min().item() == pytest.approx(0.0, abs=1e-6)
    assert unit.max().item() == pytest.approx(1.0, abs=1e-6)


def test_digits_loads_identically_twice(digits):
    again = load_digits_dataset()
    assert again["train"]["label"][:] == digits["train"]["label"][:]
    assert np.array_equal(np.asarray(again["validation"][3]["image"]), np.asarray(digits["validation"][3]["image"]))


def test_synth_sentiment_is_deterministic_balanced_and_disjoint(synth):
    again = load_synth_sentiment()
    assert list(again["train"]["sentence"]) == list(synth["train"]["sentence"])
    assert list(again["validation"]["label"]) == list(synth["validation"]["label"])
    assert synth["train"].num_rows == 4000 and synth["validation"].num_rows == 1000
    assert np.bincount(np.asarray(synth["train"]["label"])).tolist() == [2000, 2000]
    assert np.bincount(np.asarray(synth["validation"]["label"])).tolist() == [500, 500]
    train = set(synth["train"]["sentence"])
    assert len(train) == 4000
    assert not train & set(synth["validation"]["sentence"])
    assert synth["train"].features["label"].names == ["negative", "positive"]


def test_synth_sentiment_labels_follow_the_grammar(synth):
    for split in ("train", "validation"):
        for sentence, label in zip(synth[split]["sentence"], synth[split]["label"]):
            assert synth_sentiment_label(sentence) == label, sentence


def test_generator_seed_changes_sentences_not_balance():
    a, labels_a = generate_synth_sentiment(11, seed=SYNTH_SENTIMENT_SEED)
    b, labels_b = generate_synth_sentiment(11, seed=SYNTH_SENTIMENT_SEED + 7)
    assert a != b
    assert sorted(labels_a) == sorted(labels_b) == [0] * 6 + [1] * 5
    assert generate_synth_sentiment(11, seed=SYNTH_SENTIMENT_SEED) == (a, labels_a)
    with pytest.raises(ValueError, match="num_examples=1 must be >= 2"):
        generate_synth_sentiment(1, seed=0)


@pytest.mark.parametrize("sentence, label", [
    ("the movie was good", 1),
    ("the movie was not very good", 0),
    ("the food was never bad", 1),
    ("honestly the trip was not boring", 1),
    ("the food was bad but the service was great", 1),
    ("the food was great but the service was not good", 0),
    ("the game was bad yet the camera was superb at first", 1),
    ("although the plot was terrible , the acting was not bad", 1),
    ("even though the plot was good , the acting was awful", 0),
    ("the ending was awful even though the music was wonderful", 0),
    ("the hotel is good though the room is not great", 1),
])
def test_reference_labeller_on_hand_written_sentences(sentence, label):
    assert synth_sentiment_label(sentence) == label


def test_reference_labeller_rejects_sentences_outside_the_grammar():
    with pytest.raises(ValueError, match="exactly one sentiment word"):
        synth_sentiment_label("the movie was long")
    with pytest.raises(ValueError, match="exactly one sentiment word"):
        synth_sentiment_label("the movie was good and great")
    with pytest.raises(ValueError, match="has no ' , ' before its main clause"):
        synth_sentiment_label("although the food was bad the staff was good")


def test_bag_of_words_shortcut_stays_near_chance(synth):
    """Measured: unigram logistic regression 58.6 %, uni+bigram 66.7 % on validation (C=1)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    accuracies = []
    for ngram_range in ((1, 1), (1, 2)):
        vectorizer = CountVectorizer(ngram_range=ngram_range)
        features = vectorizer.fit_transform(synth["train"]["sentence"])
        model = LogisticRegression(C=1.0, max_iter=2000).fit(features, synth["train"]["label"])
        accuracies.append(model.score(vectorizer.transform(synth["validation"]["sentence"]),
                                      synth["validation"]["label"]))
    # Bounds, not the measured values: the solver may differ in the last digit across platforms.
    assert accuracies[0] < 0.62 and accuracies[1] < 0.70


def test_load_builtin_task_registry():
    assert load_builtin_task("digits")["validation"].num_rows == 360
    with pytest.raises(ValueError, match=r"no built-in task named 'sst2'; "
                                         r"built-in tasks: \['digits', 'synth-sentiment'\] \(a task marked builtin in "
                                         r"eval/tasks.py needs its loader in BUILTIN_LOADERS, eval/builtin_tasks.py\)"):
        load_builtin_task("sst2")


def test_every_builtin_task_has_a_loader_and_every_loader_a_task():
    """Two registries (the task's spec, its loader): a task without a loader would fail only when run."""
    from eval.builtin_tasks import BUILTIN_LOADERS
    from eval.tasks import BUILTIN_TASK_NAMES

    assert sorted(BUILTIN_LOADERS) == sorted(BUILTIN_TASK_NAMES)

