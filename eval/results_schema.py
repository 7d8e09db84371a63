"""The schema of results.json, for its writers (eval/eval_run.py, eval/run_outputs.py) and its
reader (eval/results.py): the file name, the version, the statuses and the allowed values, and
`validate_results`, which names every problem that makes a parsed file unusable.
docs/results_schema.md describes the fields.
"""
from __future__ import annotations

from typing import Any, Callable

RESULTS_NAME = "results.json"
SCHEMA_VERSION = 1
COMPLETED, FAILED, INCOMPLETE = "completed", "failed", "incomplete"  # INCOMPLETE: never written, only read
# loaded: fixed formats applied from another run's results (--load_config), usually a searched
# mixed-precision assignment: neither a search nor a uniform baseline.
METHODS = ("search", "uniform", "loaded", "float")
GRANULARITIES = ("layer", "block", "single")
COST_TYPES = ("memory", "compute")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_cost(value: Any) -> bool:
    """A cost: a number, not negative (a NaN or inf one is valid here: the report lists it as
    non-finite, as it does a metric)."""
    return _is_number(value) and not value < 0


def _is_metric(value: Any) -> bool:
    """A metric: a number, or null for a non-finite one (written so)."""
    return value is None or _is_number(value)


def _is_format(value: Any) -> bool:
    """A canonical format name (NumberFormat.name): `int8`, not `INT8`, `8` or `int99`."""
    from quant.formats import parse_format  # torch: only once a file is read this far

    if not isinstance(value, str):
        return False
    try:
        return parse_format(value).name == value
    except ValueError:
        return False


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_dict(value: Any) -> bool:
    return isinstance(value, dict)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _require(container: Any, key: str, prefix: str, ok: Callable[[Any], bool], expected: str,
             problems: list[str]) -> Any:
    if not isinstance(container, dict) or key not in container:
        problems.append(f"missing {prefix}{key}")
        return None
    value = container[key]
    if not ok(value):
        problems.append(f"{prefix}{key} is {_short(value)}, expected {expected}")
        return None
    return value


def _validate_search(search: Any, problems: list[str]) -> None:
    if not _is_dict(search):
        problems.append(f"search is {_short(search)}, expected an object for a search run")
        return
    _require(search, "granularity", "search.", lambda v: v in GRANULARITIES, f"one of {GRANULARITIES}", problems)
    space = _require(search, "search_space", "search.",
                     lambda v: isinstance(v, list) and bool(v) and all(map(_is_format, v)),
                     "a non-empty list of format names", problems)
    decisions = _require(search, "decisions", "search.", _is_dict, "an object", problems) or {}
    for name, decision in decisions.items():
        prefix = f"search.decisions.{name}."
        _require(decision, "layers", prefix, lambda v: isinstance(v, list), "a list of layer names", problems)
        _require(decision, "format", prefix, lambda v: _is_format(v) and (space is None or v in space),
                 "a format name of the search_space", problems)
        probs = _require(decision, "probabilities", prefix,
                         lambda v: _is_dict(v) and all(map(_is_number, v.values())),
                         "an object of option -> probability", problems)
        if probs is not None and space is not None and set(probs) != set(space):
            problems.append(f"{prefix}probabilities has options {sorted(probs)}, "
                            f"expected the search_space {space}")


def validate_results(data: Any) -> list[str]:
    """Problems that make a parsed results.json unusable; empty for a valid completed or failed run."""
    if not _is_dict(data):
        return [f"the top level is {type(data).__name__}, expected an object"]
    problems: list[str] = []
    version = data.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # not true or 1.0, which equal 1
        problems.append(f"schema_version is {_short(data.get('schema_version'))}, "
                        f"this reader knows version {SCHEMA_VERSION}: re-run it with this version of FLIQS "
                        "(or read it with the version that wrote it)")
    status = data.get("status")
    if status == FAILED:
        _require(data, "error", "", _is_str, "a string naming the exception", problems)
        return problems
    if status != COMPLETED:
        return problems + [f"status is {_short(status)}, expected 'completed' or 'failed'"]
    for key in ("exp_name", "task", "model_type", "main_metric"):
        _require(data, key, "", _is_str, "a string", problems)
    method = _require(data, "method", "", lambda v: v in METHODS, f"one of {METHODS}", problems)
    _require(data, "args", "", _is_dict, "an object of CLI arguments", problems)
    metrics = _require(data, "metrics", "", _is_dict, "an object of metric -> value", problems)
    for name, value in (metrics or {}).items():
        if not _is_metric(value):
            problems.append(f"metrics.{name} is {_short(value)}, expected a number (null if not finite)")
    main_metric = data.get("main_metric")
    if metrics is not None and _is_str(main_metric) and main_metric not in metrics:
        problems.append(f"main_metric {main_metric!r} is not in metrics (has: {', '.join(sorted(metrics)) or 'none'})")
    cost = _require(data, "cost", "", _is_dict, "an object", problems)
    if cost is not None:
        for key in ("memory_mib", "gbops", "float_memory_mib", "float_gbops"):
            _require(cost, key, "cost.", _is_cost, "a number >= 0", problems)
        _require(cost, "cost_type", "cost.", lambda v: v in COST_TYPES, f"one of {COST_TYPES}", problems)
        target_ok = _is_cost if method == "search" else (lambda v: v is None or _is_cost(v))
        for key in ("target", "ratio"):
            _require(cost, key, "cost.", target_ok, "a number >= 0" + ("" if method == "search" else " or null"),
                     problems)
    layers = _require(data, "layers", "", _is_dict, "an object of layer -> formats and cost", problems) or {}
    for name, layer in layers.items():
        for key, ok, expected in (("weight_format", _is_format, "a format name"),
                                  ("act_format", _is_format, "a format name"),
                                  ("memory_mib", _is_cost, "a number >= 0"), ("gbops", _is_cost, "a number >= 0")):
            _require(layer, key, f"layers.{name}.", ok, expected, problems)
    if method == "search":
        _validate_search(data.get("search"), problems)
    elif data.get("search") is not None:
        problems.append(f"search is {_short(data['search'])}, expected null for a {method} run")
    return problems
