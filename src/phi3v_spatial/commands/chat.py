"""`phi3v-spatial chat`: an interactive multi-turn session over stdin.

    phi3v-spatial chat --model DIR
    >>> /image table.jpg
    >>> Where is the red cube?
    ...

Lines are user turns; answers stream to stdout. Commands: `/image PATH` attaches an image to the
next turn, `/reset` starts over, `/help`, `/exit` (or end of input). An image is encoded once for
the whole session. With --json, each answer is one JSON line instead of streamed text. Thin over
`phi3v_spatial.api.Chat`.
"""
from __future__ import annotations

import argparse
import json
import sys

from .generate import add_model_arguments, add_sampling_arguments, load_from_args, result_dict, sampling_options

HELP = "/image PATH  attach an image to the next message\n/reset       clear the conversation\n/exit        quit"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--system", default=None, help="a system message")
    add_sampling_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON object per answer instead of streamed text")


def _lines(interactive: bool):
    while True:
        try:
            line = input(">>> ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and not line:
            return
        yield line.rstrip("\n")


def run(args) -> int:
    from ..errors import Phi3VError

    vlm = load_from_args(args)
    chat = vlm.start_chat(system=args.system, **sampling_options(args))
    interactive = sys.stdin.isatty()
    if interactive:
        print("type a message, or /help", file=sys.stderr)
    turn = 0
    for line in _lines(interactive):
        text = line.strip()
        if not text:
            continue
        try:
            if text.startswith("/"):
                cmd, _, rest = text.partition(" ")
                if cmd in ("/exit", "/quit"):
                    break
                if cmd == "/image":
                    if not rest.strip():
                        raise_usage("/image needs a path")
                    chat.attach(rest.strip())
                    _note(f"image attached ({len(chat.pending)} for the next message)", args)
                elif cmd == "/reset":
                    chat.reset()
                    turn = 0
                    _note("conversation cleared", args)
                elif cmd == "/help":
                    print(HELP, file=sys.stderr)
                else:
                    raise_usage(f"unknown command {cmd} (try /help)")
                continue
            turn += 1
            if args.json:
                result = chat.ask(text)
                print(json.dumps({"turn": turn, **result_dict(result)}), flush=True)
            else:
                stream = chat.ask(text, stream=True)
                for piece in stream:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                print(flush=True)
        except (Phi3VError, _Usage) as exc:  # the session goes on
            print(f"error: {exc}", file=sys.stderr, flush=True)
    return 0


class _Usage(Exception):
    pass


def raise_usage(message: str):
    raise _Usage(message)


def _note(message: str, args) -> None:
    print(f"[{message}]", file=sys.stderr, flush=True)
