"""``python -m benchmarks.reproduce EXPERIMENT|all [--budget cpu|full|tiny] [--dataset digits|mnist] ...``."""

import sys

from benchmarks.reproduce import cli

if __name__ == "__main__":
    sys.exit(cli())
