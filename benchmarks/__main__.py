"""One console command for the benchmarks: ``latent-inference gaps|compare|mixture|speed|reproduce|sweep|gpu_check [options]``.

Each subcommand is the module's own command line (``python -m benchmarks.<name>`` keeps working);
``latent-inference <name> --help`` lists its options.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "gaps": "the inference-gap decomposition (the main job)",
    "compare": "inference algorithms compared on one model, one table",
    "mixture": "our Gaussian mixture against scikit-learn's EM",
    "speed": "the speed benchmark: our loops against hand-written PyTorch",
    "reproduce": "Cremer et al. (2018) reproduced and extended, one experiment per name (and the IWAE table)",
    "sweep": "one benchmark over a grid of options, one table and one figure",
    "gpu_check": "one command that checks the toolkit on a GPU (or, --device cpu --tiny, on a CPU)",
    "savae_step_size": "why the SA-VAE's refinement step size is what it is: curvature and shares closed per k",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: latent-inference {" + ",".join(COMMANDS) + "} [options]", ""]
        lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
        print("\n".join(lines), file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if os.getcwd() not in sys.path:  # as `python -m` does: --model package.module:factory imports from here
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(f"benchmarks.{argv[0]}")
    return module.cli(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
