"""The ``mixpretrain`` command.

Each concern registers its own sub-commands from a small ``commands.py`` in its package
(``mixpretrain/data/commands.py`` adds ``synth``, ``ingest``, ``shards``; ``scaling`` adds
``laws``; ...). Those modules import heavy libraries (torch, monai) inside their handlers
only, so ``mixpretrain --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Packages that contribute sub-commands, in the order they appear in --help.
COMMAND_MODULES = (
    "mixpretrain.data.commands",
    "mixpretrain.scaling.commands",
    "mixpretrain.samplers.commands",
    "mixpretrain.train.commands",
    "mixpretrain.eval.commands",
)


class VersionAction(argparse.Action):
    """``--version``: the package version and the fingerprint of its source, the pair each run
    records in run.json under ``code``, so a user can tell whether a run came from this code."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from mixpretrain.provenance import code_record

        record = code_record()
        print(f"mixpretrain {record['version']} (code fingerprint {record['fingerprint']})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixpretrain",
        description="3-D medical MAE pretraining with transfer-scaling-law data mixtures.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=VersionAction, help="the version and the code fingerprint (as run.json records them), then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that concern has no commands (yet)
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        # User errors (bad input, bad config): one clear line, no traceback.
        print(f"mixpretrain {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
