"""The shell commands of README.md, for the docs test and for .ci/run's smoke step.

Every line of a ```bash block is a command (comments after '#' dropped). SMOKE_PREFIXES are the
ones .ci/run executes exactly as written, in README order, after the tests: the Quickstart
search, the eval_parse report commands on its output, the export of the searched model and the
check of its ONNX model against the run.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SMOKE_PREFIXES = ("python eval_parallel.py", "python -m eval.eval_parse output", "python -m quant.export output/",
                  "python examples/onnx_agreement.py output/")


def readme_commands(text: str | None = None) -> list[str]:
    text = README.read_text() if text is None else text
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                commands.append(line)
    return commands


def smoke_commands() -> list[str]:
    out = []
    for command in readme_commands():
        if command == "python eval_parallel.py" or any(
                command.startswith(p) for p in SMOKE_PREFIXES[1:]):
            out.append(command)
    return out


def run_smoke() -> int:
    """Run the smoke commands in the repository root, as written; stop at the first failure."""
    for command in smoke_commands():
        print(f"$ {command}", flush=True)
        argv = [sys.executable if part == "python" else part for part in shlex.split(command)]
        result = subprocess.run(argv, cwd=ROOT)
        if result.returncode != 0:
            print(f"README command failed with exit code {result.returncode}: {command}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run_smoke())
