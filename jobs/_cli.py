"""Command lines that are the entry functions: one --flag per keyword argument, typed and defaulted from it."""

from __future__ import annotations

import argparse
import inspect
import logging
from collections.abc import Callable


def _docs(fn: Callable) -> dict[str, str]:
    """The `name: text` lines of a Google-style Args section (continuation lines appended)."""
    docs: dict[str, str] = {}
    last = None
    for line in (inspect.getdoc(fn) or "").splitlines():
        name, sep, text = line.strip().partition(": ")
        if sep and name.isidentifier() and line.startswith("    ") and not line.startswith("        "):
            docs[name], last = text, name
        elif last and line.startswith("        "):
            docs[last] += " " + line.strip()
        else:
            last = None
    return docs


def parser_for(fn: Callable, prog: str) -> argparse.ArgumentParser:
    """An argparse parser whose flags are `fn`'s parameters; those without a default are required."""
    parser = argparse.ArgumentParser(prog=prog, description=(inspect.getdoc(fn) or "").splitlines()[0])
    docs = _docs(fn)
    for name, param in inspect.signature(fn).parameters.items():
        flag = f"--{name.replace('_', '-')}"
        help_text = docs.get(name, "")
        if param.default is inspect.Parameter.empty:
            parser.add_argument(flag, required=True, help=help_text)
        elif isinstance(param.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=param.default,
                                help=f"{help_text} (default: %(default)s)")
        else:
            parser.add_argument(flag, type=type(param.default), default=param.default,
                                help=f"{help_text} (default: %(default)s)")
    return parser


def run(fn: Callable, argv: list[str] | None, prog: str):
    """Parses argv into `fn`'s keyword arguments, sets up logging and calls it."""
    args = vars(parser_for(fn, prog).parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return fn(**args)
