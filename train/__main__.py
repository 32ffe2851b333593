"""``python -m train ...`` (and ``torchrun -m train ...``): the train command; ``python -m train eval ...``."""

import sys

import typer

from .cli import register


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    args = sys.argv[1:]
    if not args or args[0] not in ("train", "eval", "--help", "-h"):
        args = ["train", *args]
    app(args, prog_name="python -m train")


if __name__ == "__main__":
    main()
