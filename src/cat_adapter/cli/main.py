"""``cat-adapter``: a registry of subcommands, each a parser plus one call into the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cat_adapter import __version__
from cat_adapter.errors import CatAdapterError

SUBCOMMANDS = ("train", "sample", "compare", "evaluate", "score", "report", "memory", "pick")   # plugins add theirs (the toy: demo, toy)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from cat_adapter.plugins import commands

    parser = argparse.ArgumentParser(
        prog="cat-adapter",
        description="Contrastive Adapter Training (CAT) for text-to-image diffusion models (SD 1.x/2.x, SDXL, FLUX.1, "
                    "SD3, Z-Image, Chroma): learn a subject without forgetting its class.")
    parser.add_argument("--version", action="version", version=f"cat-adapter {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Show library warnings and debug logs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"cat_adapter.cli.{name}").register(sub)
    for name, register in commands().items():
        if name not in SUBCOMMANDS:
            register(sub)
    return parser


def _quiet_libraries(verbose: bool) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # torchao (imported by diffusers' quantizers when installed) notes kernels a CPU build lacks; torch notes enum
    # registrations it deprecates: nothing a user can act on
    for name in ("diffusers", "transformers", "accelerate", "peft", "huggingface_hub", "torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # huggingface_hub prints its retries through its own handler; passed on to ours too they would show twice
    logging.getLogger("huggingface_hub").propagate = False
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    except ImportError:
        pass


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or a container's stop), raised where the program is, like Ctrl-C's KeyboardInterrupt."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries(args.verbose)
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        return int(args.func(args) or 0)
    except CatAdapterError as exc:
        print(f"cat-adapter {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:   # Ctrl-C or SIGTERM: one line, with what the run left and how to go on
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
        note = getattr(exc, "note", None) or ("it stopped before training started: nothing to resume"
                                              if args.command == "train" else "")
        print(f"cat-adapter {args.command}: {what}" + (f"; {note}" if note else ""), file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:  # output piped into head & co.: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
