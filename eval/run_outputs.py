"""What a run leaves behind: config.json, model.txt, output.txt and results.json (last, atomic).

The schema of results.json is docs/results_schema.md.
"""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

from eval.results_schema import FAILED, SCHEMA_VERSION


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary file next to `path`, then rename it to `path`: readers see the
    old file or the whole new one, never a part; a failure leaves no temporary behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates owner-only files; give the mode open() would (0666 & ~umask), so that
        # colleagues on shared storage can read results like every other output
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _json_safe(value: Any) -> Any:
    """NaN/inf become null so results.json stays valid JSON; everything else passes through."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(_json_safe(data), indent=2, default=str) + "\n")


def package_versions() -> dict[str, str]:
    import accelerate
    import datasets
    import torch
    import transformers

    from eval import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "accelerate": accelerate.__version__, "fliqs": __version__}


def failed_results(args: Mapping[str, Any], error: BaseException, traceback_text: str,
                   wall_time_s: float) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION, "status": FAILED,
        "error": f"{type(error).__name__}: {error}", "traceback": traceback_text,
        "exp_name": args.get("exp_name"), "task": args.get("task"), "model_type": args.get("model_type"),
        "method": args.get("mode"), "args": dict(args), "main_metric": None, "metrics": {},
        "cost": None, "layers": {}, "search": None, "best_checkpoint": None, "wall_time_s": wall_time_s,
        "versions": package_versions(), "device": args.get("device"),
    }


def _amount(value: float) -> str:
    """4 decimals, or 4 significant digits below 1 (a tiny model's 0.00003 MiB is not 0.0000)."""
    return f"{value:.4f}" if abs(value) >= 1 or value == 0 else f"{value:#.4g}"


def summary_text(results: Mapping[str, Any]) -> str:
    """The human-readable output.txt (also printed at the end of a run)."""
    lines = [f"run        {results['exp_name']}  ({results['task']}, {results['model_type']}, {results['method']})",
             f"status     {results['status']}"]
    metrics = results.get("metrics") or {}
    main = results.get("main_metric")
    if main in metrics:
        lines.append(f"metric     {main} = {metrics[main]:.4f}")
    cost = results.get("cost")
    if cost:
        lines.append(f"memory     {_amount(cost['memory_mib'])} MiB (float {_amount(cost['float_memory_mib'])} MiB)")
        lines.append(f"compute    {_amount(cost['gbops'])} GBOPs (float {_amount(cost['float_gbops'])} GBOPs)")
        if cost.get("target") is not None:
            from cost.model_cost import parse_cost_type  # here: the report reads results without torch

            unit = parse_cost_type(cost["cost_type"]).unit
            lines.append(f"target     {_amount(cost['target'])} {unit} ({cost['cost_type']}); achieved ratio "
                         f"{cost['ratio']:.3f}")
    lines.append(f"wall time  {results['wall_time_s']:.1f} s")
    layers = results.get("layers") or {}
    if layers:
        width = max(len(name) for name in layers)
        lines.append("")
        lines.append(f"{'layer':<{width}}  weight      activation")
        for name, layer in layers.items():
            lines.append(f"{name:<{width}}  {layer['weight_format']:<10}  {layer['act_format']}")
    search = results.get("search")
    if search:
        lines.append("")
        lines.append("final policy (probability of each format per decision)")
        for decision, result in search["decisions"].items():
            probs = "  ".join(f"{k}={v:.3f}" for k, v in result["probabilities"].items())
            lines.append(f"  {decision}: {result['format']}  [{probs}]")
    if results.get("error"):
        lines.append(f"error      {results['error']}")
    return "\n".join(lines) + "\n"
