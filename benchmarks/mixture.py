"""Our Gaussian mixture against scikit-learn's EM: ``python -m benchmarks.mixture``.

Fits :class:`ppl_models.GaussianMixture` by maximizing the exact marginal
likelihood with the ``enum`` objective (``TraceEnum_ELBO`` sums out the
assignments; full-batch Adam from a k-means start, best of ``--restarts`` by
training log-likelihood) and scikit-learn's ``GaussianMixture`` (EM, k-means
start, ``n_init=--restarts``) on the same data, then reports the held-out
log-likelihood per point of both, measured in one run.

Data: a synthetic 2-D mixture of three Gaussians, and scikit-learn's digits
projected on their first principal components (fitted on the training split).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
import torch

from benchmarks.options import positive_ints, run_cli
from benchmarks.outdir import OutputFolder
from benchmarks.report import MIXTURE_HEADER, mixture_markdown, mixture_row
from inference.objectives import make_loss
from inference.sampling import set_seed
from inference.validation import positive_int
from inference.validation import seed as check_seed
from ppl_models import COVARIANCES, build_model, model_config


def synthetic(n: int, seed: int) -> torch.Tensor:
    """``n`` points from a fixed 2-D mixture of three Gaussians with diagonal covariances."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.tensor([[0.0, 0.0], [3.0, 1.0], [-1.0, 3.0]])
    scales = torch.tensor([[0.5, 0.8], [0.7, 0.4], [0.6, 0.6]])
    z = torch.randint(0, 3, (n,), generator=gen)
    return means[z] + torch.randn(n, 2, generator=gen) * scales[z]


def digits_pca(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits (pixels / 16), split 1400/397 with seed 0, projected on ``dim`` principal components of the training split."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    data = load_digits().data / 16.0
    perm = np.random.RandomState(0).permutation(len(data))
    train, test = data[perm[:1400]], data[perm[1400:]]
    pca = PCA(dim, random_state=0).fit(train)
    return torch.tensor(pca.transform(train), dtype=torch.float), torch.tensor(pca.transform(test), dtype=torch.float)


def fit_mixture(x: torch.Tensor, components: int, covariance: str, *, restarts: int = 5, steps: int = 300, lr: float = 0.05, seed: int = 0):
    """Best of ``restarts`` full-batch fits of the exact marginal likelihood (the ``enum`` objective)."""
    best = None
    for r in range(restarts):
        set_seed(seed * 1000 + r)
        model, guide = build_model(model_config("gmm", x.shape[1], "gaussian", components=components, covariance=covariance, min_scale=1e-3))
        model.init_from_data(x, torch.Generator().manual_seed(seed * 1000 + r))
        loss = make_loss("enum", model, guide)
        optimizer = torch.optim.Adam(loss.parameters(), lr=lr)
        for _ in range(steps):
            optimizer.zero_grad()
            loss(x).backward()
            optimizer.step()
        with torch.no_grad():
            train_ll = float(model.log_px(x).mean())
        if best is None or train_ll > best[0]:
            best = (train_ll, model)
    return best[1]


def compare(train: torch.Tensor, test: torch.Tensor, components: int, covariance: str, restarts: int = 5, seed: int = 0, steps: int = 300) -> dict:
    """Held-out log-likelihood per point of our fit and of scikit-learn's, same K and covariance type."""
    from sklearn.mixture import GaussianMixture as EM

    ours = fit_mixture(train, components, covariance, restarts=restarts, seed=seed, steps=steps)
    em = EM(components, covariance_type=covariance, n_init=restarts, random_state=seed).fit(train.numpy())
    with torch.no_grad():
        ours_test = float(ours.log_px(test).mean())
        ours_train = float(ours.log_px(train).mean())
    return {
        "components": components, "covariance": covariance,
        "ours_train": ours_train, "sklearn_train": float(em.score(train.numpy())),
        "ours_test": ours_test, "sklearn_test": float(em.score(test.numpy())),
        "difference": ours_test - float(em.score(test.numpy())),
    }


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mixture", description=__doc__.split("\n\n")[0])
    p.add_argument("--components", type=positive_ints, default="2,3,4", help="K values (default: %(default)s)")
    p.add_argument("--pca-dims", type=positive_ints, default="2,5", help="digits PCA dimensions (default: %(default)s)")
    p.add_argument("--restarts", type=int, default=5, help="starts per fit, ours and EM's n_init (default: %(default)s)")
    p.add_argument("--steps", type=int, default=300, help="full-batch Adam steps per start (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("results", "mixture"))
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in --out")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    ks, dims = args.components, args.pca_dims
    positive_int(args.restarts, "--restarts")
    positive_int(args.steps, "--steps")
    check_seed(args.seed, "--seed")
    with OutputFolder(args.out, results=("mixture.json", "mixture.md"), overwrite=args.overwrite) as folder:
        datasets = {"synthetic-2d": (synthetic(600, args.seed), synthetic(400, args.seed + 1))}
        datasets.update({f"digits-pca{d}": digits_pca(d) for d in dims})
        rows = []
        print(MIXTURE_HEADER, flush=True)
        for name, (train, test) in datasets.items():
            for k in ks:
                for cov in COVARIANCES:
                    rows.append({"data": name, **compare(train, test, k, cov, args.restarts, args.seed, args.steps)})
                    print(mixture_row(rows[-1]), flush=True)
        config = {k: v for k, v in vars(args).items() if k != "overwrite"}
        folder.write("", {"mixture.json": {"config": config, "rows": rows}, "mixture.md": mixture_markdown(rows, args.restarts, args.seed)})
    return {"config": config, "rows": rows}


def cli(argv: list[str] | None = None) -> int:
    return run_cli(make_parser().parse_args, main, argv)


if __name__ == "__main__":
    sys.exit(cli())
