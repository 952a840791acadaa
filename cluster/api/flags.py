"""Command lines that are entry functions: one --flag per keyword argument, typed and defaulted from its
signature and described by its docstring's Args section. `gallery serve` and every job use it, so that a
flag is always exactly the keyword argument of the function it calls (as autofaiss's command line is its
functions')."""

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


def _help(text: str, default: object) -> str:
    """The parameter's description, and its default where the default says something ("" does not)."""
    text = text.replace("%", "%%")  # argparse formats help with %
    return text if default == "" else f"{text} (default: %(default)s)"


def add_arguments(parser: argparse.ArgumentParser, fn: Callable) -> argparse.ArgumentParser:
    """Adds one --flag per parameter of `fn` to `parser` and returns it; parameters without a default are required.

    Example:
        >>> def build(collection: str, min_growth: float = 2.0, force: bool = False): ...
        >>> vars(add_arguments(argparse.ArgumentParser(), build).parse_args(["--collection", "c", "--force"]))
        {'collection': 'c', 'min_growth': 2.0, 'force': True}
    """
    docs = _docs(fn)
    for name, param in inspect.signature(fn).parameters.items():
        flag = f"--{name.replace('_', '-')}"
        text = docs.get(name, "")
        if param.default is inspect.Parameter.empty:
            parser.add_argument(flag, required=True, help=text.replace("%", "%%"))
        elif isinstance(param.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=param.default,
                                help=_help(text, param.default))
        else:
            parser.add_argument(flag, type=type(param.default), default=param.default,
                                help=_help(text, param.default))
    return parser


def parser_for(fn: Callable, prog: str) -> argparse.ArgumentParser:
    """An argparse parser whose flags are `fn`'s parameters, described by the first line of its docstring."""
    description = (inspect.getdoc(fn) or "").partition("\n")[0]
    return add_arguments(argparse.ArgumentParser(prog=prog, description=description), fn)


def run(fn: Callable, argv: list[str] | None, prog: str):
    """Parses argv into `fn`'s keyword arguments, sets up logging and calls it."""
    args = vars(parser_for(fn, prog).parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return fn(**args)
