"""``python -m e2ekit`` and the ``e2ekit`` console script."""

from __future__ import annotations

import sys


def main() -> int:
    from e2ekit.core.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
