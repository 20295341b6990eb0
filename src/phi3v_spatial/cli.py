"""`phi3v-spatial` command line: a thin dispatcher over the library.

Each subcommand lives in `phi3v_spatial.commands.<name>` and exposes `add_arguments(parser)` and
`run(args) -> int`. Those modules import heavy libraries inside `run`, so `--help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import Phi3VError

# (subcommand, module under phi3v_spatial.commands, one-line help)
COMMANDS = (
    ("generate", "generate", "answer one prompt about images"),
    ("chat", "chat", "interactive multi-turn chat"),
    ("synth", "synth", "generate synthetic spatial scenes and question-answer data"),
    ("eval", "evaluate", "score a model on spatial benchmarks"),
    ("train", "train", "fine-tune (LoRA, QLoRA, full)"),
    ("export", "export", "merge a LoRA adapter and export a Hugging Face folder"),
)


def _available_commands():
    for name, module, help_text in COMMANDS:
        try:
            mod = importlib.import_module(f"phi3v_spatial.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"phi3v_spatial.commands.{module}":
                continue  # not built yet
            raise
        yield name, mod, help_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phi3v-spatial", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, mod, help_text in _available_commands():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except Phi3VError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
