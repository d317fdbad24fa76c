"""Loupe: `python main.py [FOLDER]` opens the app; `python main.py demo|import|export|...` runs a command."""

import sys

from app.main import run

if __name__ == "__main__":
    sys.exit(run())
