"""Launch FLIQS runs in parallel over GPUs (or CPU workers): `python eval_parallel.py [run flags]
[launcher flags]`. See eval/launch_cli.py, or `python eval_parallel.py --help`."""
import sys

if __name__ == "__main__":
    try:
        # The import takes seconds (torch, transformers): a Ctrl-C during it is a stop, not a crash.
        from eval.launch_cli import main
    except KeyboardInterrupt:
        sys.stderr.write("eval_parallel: interrupted before any run started\n")
        raise SystemExit(130)
    raise SystemExit(main())
