"""Launch FLIQS runs in parallel over GPUs (or CPU workers): `python eval_parallel.py [run flags]
[launcher flags]`. See eval/launch_cli.py, or `python eval_parallel.py --help`."""
import sys


def cli() -> int:
    """`python eval_parallel.py` / `fliqs-launch`."""
    try:
        # The import takes seconds (torch, transformers): a Ctrl-C during it is a stop, not a crash.
        from eval.launch_cli import main
    except KeyboardInterrupt:
        sys.stderr.write("eval_parallel: interrupted before any run started\n")
        return 130
    return main()


if __name__ == "__main__":
    raise SystemExit(cli())
