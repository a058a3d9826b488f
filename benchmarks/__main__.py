"""`python -m benchmarks ...` from the repository's root."""

import importlib.util
import sys


def main() -> None:
    # At the root, the checkout's refinegraph/ folder shadows an installed package; only an
    # editable install (pip install -e .) maps the role folders (graphs/, tools/, ...) under it.
    if importlib.util.find_spec("refinegraph.graphs") is None:
        sys.exit("python -m benchmarks needs refinegraph installed from this checkout: pip install -e .")
    from benchmarks.cli import main as run

    run()


main()
