"""The ``modelsync`` command: ``demo``, ``explore`` and ``inspect FILE``.

This module only parses options and prints; the work lives in `modelsync.demo`,
`semantics` and `modelsync.inspect_file`. Every failure the user can cause ends as one
line on stderr, ``modelsync: error: ...``, and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from .errors import ArgumentError, ModelSyncError

PROG = "modelsync"
EXIT_ERROR = 1  # the library refused (bad device, unwritable folder, unreadable file)
EXIT_USAGE = 2  # the command line itself was wrong (argparse's convention)
EXIT_BROKEN_PIPE = 128 + 13  # the reader closed the pipe (`| head`): a SIGPIPE's status


class UsageError(Exception):
    """A command-line mistake found by argparse; reported in one line like the others."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one line instead of usage + message + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The parser with its three subcommands (exposed so docs and tests can read it)."""
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="Train small models whose parameters move between host and device as a "
                    "copy, a move or a wrapper, and measure what crosses the boundary.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = commands.add_parser(
        "demo", help="train a digits classifier in each mode and print what it cost",
        description="For each mode (wrap, copy, move): build an MLP on the host, convert it to "
                    "the device, train it with Adam on the UCI handwritten digits that ship "
                    "with modelsync, save it back to the host, reload and test it, and sync a "
                    "second copy of the same graph. Ends with a table of test accuracy, "
                    "training time and bytes moved per mode.")
    _device_option(demo)
    demo.add_argument("--mode", default="all", choices=("wrap", "copy", "move", "all"),
                      help="which conversion mode to run (default: all three)")
    demo.add_argument("--model", default="mlp", choices=("mlp", "cnn", "lm"),
                      help="mlp: the digits MLP (default); cnn: a CNN with BatchNorm on the "
                           "digits images; lm: a character-level transformer with tied "
                           "embeddings on the text of Python's pydoc_data.topics")
    demo.add_argument("--epochs", type=_positive_int, default=None, metavar="N",
                      help="passes over the training data (default: the model's own: mlp "
                           "12, cnn 8, lm 1)")
    demo.add_argument("--out", default=None, metavar="DIR",
                      help="folder for the saved .safetensors files (created if needed; "
                           "default: a temporary folder, removed afterwards)")
    demo.add_argument("--seed", type=_natural, default=0,
                      help="seed of the model's initial weights (default: 0)")
    across = demo.add_mutually_exclusive_group()
    across.add_argument("--distributed", action="store_true",
                        help="one replica per MPI process, trained with DataParallel on shards "
                             "of the data: run as mpiexec -n N modelsync demo --distributed "
                             "(needs pip install 'modelsync[mpi]')")
    across.add_argument("--ranks", type=_positive_int, default=None, metavar="N",
                        help="run the distributed demo on N processes: launches mpiexec -n N "
                             "modelsync demo --distributed for you, with the same options (the "
                             "mpiexec of the MPI mpi4py loads, with the flags it needs as root "
                             "or with more ranks than cores; needs pip install "
                             "'modelsync[mpi]')")
    _progress_option(demo)

    explore = commands.add_parser(
        "explore", help="measure each workflow under each mode and write docs/semantics.md",
        description="Run the semantics exploration: convert-and-train, save-back-to-host and "
                    "keep-two-copies-in-step, each under copy, move and wrap, measured with "
                    "the transfer ledger; writes a Markdown report (and a PNG plot when "
                    "matplotlib is installed).")
    _device_option(explore)
    explore.add_argument("--out", default="docs/semantics.md", metavar="FILE",
                         help="the report to write (default: docs/semantics.md); the plot "
                              "goes next to it")
    _progress_option(explore)

    inspect = commands.add_parser(
        "inspect", help="print a saved model's architecture, graph id, params and sizes",
        description="Read a .safetensors file written by ms.save and print its architecture, "
                    "graph id, parameters and sizes, without running anything from the file.")
    inspect.add_argument("file", metavar="FILE", help="a file written by ms.save")
    _device_option(inspect, default=None,
                   extra="also load the model onto this device and report it (default: only "
                         "read the file)")
    export = commands.add_parser(
        "export", help="write a saved model as an ONNX graph (needs modelsync[onnx])",
        description="Load a .safetensors file written by ms.save (nothing in it is executed), "
                    "and write the model in evaluation mode as an ONNX graph checked by ONNX's "
                    "checker, with a dynamic batch axis. --input-shape is one example batch's "
                    "shape, batch first (1,64 for the digits MLP; 1,1,8,8 for the CNN; 1,32 "
                    "with --dtype int64 for the language model's token ids).")
    export.add_argument("file", metavar="MODEL", help="a file written by ms.save")
    export.add_argument("out", metavar="OUT", help="the .onnx file to write (atomically)")
    export.add_argument("--input-shape", required=True, type=_shape, metavar="N,D,...",
                        help="the example input's shape, batch first, e.g. 1,64")
    export.add_argument("--dtype", default="float32",
                        choices=("float16", "float32", "float64", "int32", "int64"),
                        help="the input's dtype (default: float32; int64 for token ids)")
    return parser


def _shape(text: str) -> tuple[int, ...]:
    """An argparse type: a comma-separated shape of positive ints, batch first."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape; expected comma-separated positive integers such as "
            "1,64") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every size must be at least 1")
    return shape


def _device_option(parser: argparse.ArgumentParser, default: str | None = "auto",
                   extra: str = "") -> None:
    parser.add_argument(
        "--device", default=default, metavar="SPEC",
        help=extra or "host, cpu, sim:1, sim:2, cuda, cuda:N or auto (default: auto = cuda:0 "
                      "when CuPy can use a GPU, else the simulated accelerator sim:1)")


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (they go to stderr, and only to a terminal)")


def _int_from(low: int) -> Any:
    """An argparse type: an integer in [low, ∞), or a usage error saying so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is outside [{low}, ∞)")
        return value

    return parse


_natural, _positive_int = _int_from(0), _int_from(1)


# -- commands -----------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    if args.model != "mlp" and (args.distributed or args.ranks is not None):
        raise ArgumentError(f"--model {args.model} runs in one process; the distributed demo "
                            "(--ranks, --distributed) trains the mlp")
    if args.ranks is not None:
        return _launch_ranks(args)
    if args.distributed:
        return _cmd_demo_distributed(args)
    dev, device_line = demo.resolve_device(args.device)
    if args.out is not None:  # fail on a bad folder now, before any training
        demo.check_writable_dir(args.out, label="--out")
    print(device_line, flush=True)
    rows = demo.run_demo(
        dev=dev, modes=args.mode, epochs=args.epochs, out=args.out, model=args.model,
        progress=args.progress, seed=args.seed, log=lambda line: print(line, flush=True))
    print()
    for line in demo.summary_lines(rows, kept=args.out is not None):
        print(line)
    return 0


def _launch_ranks(args: argparse.Namespace) -> int:
    """``modelsync demo --ranks N ...``: run ``mpiexec -n N python -m modelsync demo
    --distributed`` with the same options; its exit status is ours."""
    import subprocess

    from .distributed.launch import launch_command

    options = ["--device", args.device, "--mode", args.mode, "--seed", str(args.seed)]
    if args.epochs is not None:
        options += ["--epochs", str(args.epochs)]
    if args.out is not None:
        options += ["--out", args.out]
    if not args.progress:
        options.append("--no-progress")
    return subprocess.call([*launch_command(args.ranks), sys.executable, "-m", "modelsync",
                            "demo", "--distributed", *options])


def _cmd_demo_distributed(args: argparse.Namespace) -> int:
    from . import demo
    from .demo import ranks_text
    from .distributed import init
    from .distributed.demo import rank_device, run

    comm = init()
    if args.out is not None and comm.rank == 0:
        demo.check_writable_dir(args.out, label="--out")
    _, device_line = rank_device(comm, args.device)
    if comm.rank == 0:
        print(f"{device_line}; {ranks_text(comm.size)}", flush=True)
    rows = run(comm, dev=args.device, modes=args.mode, epochs=args.epochs or demo.DEFAULT_EPOCHS,
               out=args.out, progress=args.progress, seed=args.seed,
               log=lambda line: print(line, flush=True))
    if rows is not None:
        print()
        for line in demo.summary_lines(rows, kept=args.out is not None):
            print(line)
    return 0


def _cmd_explore(args: argparse.Namespace) -> int:
    import semantics

    report = semantics.run(out=args.out, device=args.device, progress=args.progress,
                           log=lambda line: print(line, flush=True))
    print(f"wrote {report}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .devices import device
    from .inspect_file import inspect_text

    dev = None if args.device is None else device(args.device)  # a bad --device: fail first
    print(inspect_text(args.file).rstrip("\n"))
    if dev is not None:  # also prove the file loads there, and say what it cost
        from . import io
        from .demo import format_bytes
        from .transfers import track_transfers
        from .tree import params

        with track_transfers() as ledger:
            model = io.load(args.file, device=dev)
        print(f"loads on {dev}: {len(params(model))} params, {format_bytes(ledger.bytes)} moved "
              "to get there")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import numpy as np

    from . import io
    from .export import export_onnx

    model = io.load(args.file, device="host")
    export_onnx(model, args.out, example=np.zeros(args.input_shape, dtype=args.dtype))
    print(f"wrote {args.out} (input: batch x {' x '.join(map(str, args.input_shape[1:]))} "
          f"{args.dtype})")
    return 0


COMMANDS = {"demo": _cmd_demo, "explore": _cmd_explore, "export": _cmd_export,
            "inspect": _cmd_inspect}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help and --version print, then exit 0
            return int(done.code or 0)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # (a closed pipe shows here, not in the interpreter's exit flush)
        return status
    except BrokenPipeError:  # `modelsync inspect FILE | head -3`: the reader is done
        return _quiet_broken_pipe()
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (ModelSyncError, ValueError, TypeError, OSError) as exc:
        status = _fail(_one_line(exc), EXIT_ERROR)
        linger = getattr(exc, "linger", 0.0)  # (a LaunchError: let every process speak)
        if linger:
            sys.stderr.flush()
            time.sleep(linger)
        return status
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


def _quiet_broken_pipe() -> int:
    """End as Unix tools do when their reader closes the pipe: no message, the status of a
    process ended by SIGPIPE (128 + 13). Standard output is pointed at /dev/null first, so
    the interpreter's own flush at exit cannot fail again and print a warning."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # (stdout replaced, e.g. by a test harness)
        pass
    return EXIT_BROKEN_PIPE


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
