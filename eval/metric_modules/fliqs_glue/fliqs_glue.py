"""GLUE's metrics as a local `evaluate` module, so they load offline with `evaluate.load(path)`.

The same scikit-learn / scipy functions as the hub's `glue` metric: accuracy, binary F1,
Matthews correlation, Pearson and Spearman correlation. The config name chooses which ones,
joined by "+", e.g. `evaluate.load(path, "accuracy+f1")` for mrpc, `"pearson+spearmanr"` for
stsb. Classification metrics take integer predictions/references, correlations take floats.
"""
import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

_DESCRIPTION = "Offline GLUE metrics (accuracy, f1, matthews_correlation, pearson, spearmanr)."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (classification) or scores (pearson/spearmanr).
    references: ground-truth labels or scores.
Returns: a dict with one float per metric named in the config name ("+"-joined).
"""
_CITATION = """@inproceedings{wang2019glue, title={{GLUE}: A Multi-Task Benchmark and Analysis Platform
for Natural Language Understanding}, author={Wang, Alex and others}, booktitle={ICLR}, year={2019}}"""

CLASSIFICATION = ("accuracy", "f1", "matthews_correlation")
REGRESSION = ("pearson", "spearmanr")


def _metric_names(config_name):
    names = tuple(config_name.split("+"))
    unknown = [n for n in names if n not in CLASSIFICATION + REGRESSION]
    if unknown:
        raise ValueError(f"fliqs_glue config {config_name!r} names unknown metrics {unknown}; join "
                         f"names from {CLASSIFICATION + REGRESSION} with '+', e.g. 'accuracy+f1'")
    kinds = {n in REGRESSION for n in names}
    if len(kinds) != 1:
        raise ValueError(f"fliqs_glue config {config_name!r} mixes classification {CLASSIFICATION} and "
                         f"regression {REGRESSION} metrics; load them as two modules")
    return names


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FliqsGlue(evaluate.Metric):
    def _info(self):
        if self.config_name == "default":
            raise ValueError("fliqs_glue needs a config name: metric names joined by '+', "
                             f"from {CLASSIFICATION + REGRESSION}, e.g. 'accuracy' or 'pearson+spearmanr'")
        regression = _metric_names(self.config_name)[0] in REGRESSION
        dtype = "float64" if regression else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype),
                                        "references": datasets.Value(dtype)}),
        )

    def _compute(self, predictions, references):
        # Python lists from the float64/int64 features: evaluate's "numpy" format yields float32.
        predictions, references = np.asarray(predictions), np.asarray(references)
        functions = {
            "accuracy": lambda: float((predictions == references).mean()),
            "f1": lambda: float(f1_score(y_true=references, y_pred=predictions)),
            "matthews_correlation": lambda: float(matthews_corrcoef(references, predictions)),
            "pearson": lambda: float(pearsonr(predictions, references)[0]),
            "spearmanr": lambda: float(spearmanr(predictions, references)[0]),
        }
        return {name: functions[name]() for name in _metric_names(self.config_name)}
