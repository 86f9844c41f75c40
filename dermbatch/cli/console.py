"""The rich consoles the commands print to."""

import sys

from rich.console import Console

#: Width used when standard output is a pipe or a file, so tables are not folded at 80 columns.
PIPE_WIDTH = 200

console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
error_console = Console(stderr=True, soft_wrap=True)
