"""Launch FLIQS runs in parallel over GPUs (or CPU workers): `python eval_parallel.py [run flags]
[launcher flags]`. See eval/launch_cli.py, or `python eval_parallel.py --help`."""
from eval.launch_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
