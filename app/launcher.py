"""Entry point of the `loupe` command: headless subcommands go to detector.cli, the rest to the GUI."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from detector.cli import COMMANDS

    if argv and (argv[0] in COMMANDS or argv[0] in ("-h", "--help")):
        from detector.cli import main as cli_main

        return cli_main(argv)
    from app.main import main as gui_main

    return gui_main(argv)
