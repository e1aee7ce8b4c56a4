"""Experiment 6: the 2-D posterior figure (Cremer, Li & Duvenaud 2018, Figure 2).

A VAE with a 2-D latent space (FFG encoder); for four held-out datapoints, contour plots side by
side of the true posterior p(z|x) normalized on a grid (:func:`inference.grid.grid_posterior`), the
amortized q(z|x), q*_FFG and q*_flow (the best per-datapoint FFG and flow), each panel titled with
its bound: log p(x) on the grid for the true posterior, the ELBO for the others. The grid's log p(x)
is set beside the IWAE estimate of every datapoint (they agree within 3 Monte Carlo standard errors
when the grid covers the posterior: a test checks this).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch

from benchmarks.report import save_figure
from inference.claims import judge_monte_carlo
from inference.estimators import elbo, iwae_log_px
from inference.grid import GridError, check_grid, grid_posterior, guide_on_grid
from inference.inclusion import continue_within
from inference.local import local_posterior

from .models import FLOW
from .report import Report

NAME = "posterior-2d"
TITLE = "The 2-D posterior figure (Cremer, Li & Duvenaud 2018)"
FIGURES = ("posterior-2d.png",)
NUM_POINTS = 4
PANELS = ("true posterior", "amortized q", "q*_FFG", "q*_flow")


def trained_2d(runner):
    b = runner.budget
    cfg = runner.vae_config(latent_dim=2, guide="ffg")
    return runner.train("vae2d-ffg", cfg, runner.train_options(epochs=b.posterior_epochs))


def wide_enough_grid(model, guide, x, bound: float, points: int, max_elements: int):
    """The grid posterior over [-bound, bound]^2, the bound doubled (up to four times) while the grid cuts off mass.

    Its cells need not resolve the posteriors: it is where :func:`zoomed_grids` starts."""
    grid, bounds = _widened(model, guide, x, ((-bound, bound), (-bound, bound)), points, max_elements, tries=4)
    return grid, bounds[0][1]


#: The zoomed grid of a datapoint spans its posterior's mean ± this many standard deviations (of the coarse grid), per axis
#: (fewer where ``points`` is too small for cells of a quarter sd over that span).
ZOOM_SDS = 8.0
#: A zoomed grid resolves its posterior when every cell is at most this fraction of a posterior standard deviation wide.
CELLS_PER_SD = 4.0


def zoomed_grids(model, guide, x, coarse, points: int, max_elements: int, rounds: int = 8) -> list:
    """Per datapoint, a grid of ``points``² cells over the rectangle holding its posterior's mean ± :data:`ZOOM_SDS` standard
    deviations on each axis: a posterior a few cells of the ``coarse`` grid wide (MNIST's) gets ``points``² cells of its own,
    so the grid's log p(x) is no longer limited by the coarse cells. The rectangle is found by zooming in from the coarse grid,
    each axis on its own, until the cells resolve the posterior (a cell at most a quarter of its standard deviation on both
    axes); it doubles while it cuts off mass. A zoom that ends after ``rounds`` without resolving the posterior raises
    :class:`inference.grid.GridTooCoarse`."""
    out = []
    for i in range(len(x)):
        grid = coarse.point(i)
        for _ in range(rounds):
            if _resolved(grid):
                break
            mean, sd, given = grid.mean()[0].tolist(), grid.std()[0].tolist(), grid.conditional_std()[0].tolist()
            # mean ± ZOOM_SDS sd, narrower where the points are too few for cells of a quarter of the conditional sd
            half = [min(ZOOM_SDS * max(s, w / 2), 0.9 * points * max(c, w / 2) / (2 * CELLS_PER_SD)) for s, c, w in zip(sd, given, grid.widths)]
            bounds = tuple((m - h, m + h) for m, h in zip(mean, half))
            grid, _ = _widened(model, guide, x[i : i + 1], bounds, points, max_elements)
        if not _resolved(grid):
            try:
                check_grid(grid, max_edge_mass=EDGE_MASS, min_cells_per_sd=CELLS_PER_SD)
            except GridError as error:
                raise type(error)(f"datapoint {i}: the zoom ended after {rounds} rounds without resolving its posterior: {error}") from None
        out.append(grid)
    return out


#: The most posterior mass a grid may leave in its outermost ring of cells.
EDGE_MASS = 1e-3


def _resolved(grid) -> bool:
    return bool((grid.edge_mass <= EDGE_MASS).all() and (grid.cells_per_sd() >= CELLS_PER_SD).all())


def _widened(model, guide, x, bounds, points: int, max_elements: int, tries: int = 3):
    """The grid posterior over the rectangle ``bounds`` (one (low, high) per axis), each axis doubled about its centre (up to
    ``tries`` times) while the grid cuts off mass; the last try's :class:`inference.grid.GridCutsOffMass` is raised. The cells'
    resolution is not checked here."""
    for attempt in range(tries + 1):
        grid = grid_posterior(model, guide, x, bounds, points, max_elements=max_elements, check=False)
        if bool((grid.edge_mass <= EDGE_MASS).all()):
            return grid, bounds
        if attempt == tries:
            check_grid(grid, max_edge_mass=EDGE_MASS, min_cells_per_sd=0.0)
        bounds = tuple(((lo + hi) / 2 - (hi - lo), (lo + hi) / 2 + (hi - lo)) for lo, hi in bounds)
    raise AssertionError("unreachable")


def run(runner) -> Report:
    b = runner.budget
    model, guide, _ = trained_2d(runner)
    x = runner.points("test", NUM_POINTS)
    coarse, bound = wide_enough_grid(model, guide, x, b.grid_bound, b.grid_points, b.max_elements)
    grids = zoomed_grids(model, guide, x, coarse, b.grid_points, b.max_elements)
    fits = {"q*_FFG": local_posterior(model, guide, x, runner.local_options(), family="ffg", eval_samples=b.elbo_samples),
            "q*_flow": local_posterior(model, guide, x, runner.local_options(), family=FLOW, eval_samples=b.elbo_samples)}
    inclusion = continue_within(model, guide, x, fits["q*_flow"], fits["q*_FFG"], runner.local_options(), eval_samples=b.elbo_samples,
                                max_elements=b.max_elements)  # the flow family contains the FFG: no q*_flow left below q*_FFG
    fits["q*_flow"] = inclusion.fit
    log_px_grid = torch.cat([g.log_px for g in grids])
    densities = {"true posterior": [g.log_posterior[0] for g in grids],
                 "amortized q": [guide_on_grid(guide, model, x[i : i + 1], g.axes)[0] for i, g in enumerate(grids)]}
    bounds = {"true posterior": log_px_grid, "amortized q": elbo(model, guide, x, b.elbo_samples).value}
    for label, fit in fits.items():
        densities[label] = [guide_on_grid(fit.guide.subset(torch.tensor([i])), model, x[i : i + 1], g.axes)[0] for i, g in enumerate(grids)]
        bounds[label] = fit.elbo.value
    iwae = iwae_log_px(model, guide, x, max(b.log_px_samples, 16))
    agree = ((log_px_grid - iwae.value).abs() <= 3 * iwae.stderr + 1e-6).tolist()
    results = {
        "grid": {"bound": bound, "points": b.grid_points, "edge_mass": coarse.edge_mass.tolist(),
                 "zoomed": [{"bounds": _rectangle(g), "edge_mass": float(g.edge_mass[0]), "cells_per_sd": g.cells_per_sd()[0].tolist()}
                            for g in grids]},
        "per_point": {"log_px_grid": log_px_grid.tolist(), "log_px_coarse_grid": coarse.log_px.tolist(), "log_px_iwae": iwae.value.tolist(),
                      "log_px_iwae_se": iwae.stderr.tolist(), "grid_agrees_with_iwae": agree,
                      **{f"elbo {k}": v.tolist() for k, v in bounds.items() if k != "true posterior"}},
    }
    report = Report(NAME, TITLE, results)
    report.table(["datapoint", "log p(x), grid", "log p(x), IWAE", "agree (3 SE)", "L[q]", "L[q*_FFG]", "L[q*_flow]"],
                 [[i, f"{log_px_grid[i]:.3f}", f"{iwae.value[i]:.3f} ± {iwae.stderr[i]:.3f}", "yes" if agree[i] else "no",
                   f"{bounds['amortized q'][i]:.3f}", f"{bounds['q*_FFG'][i]:.3f}", f"{bounds['q*_flow'][i]:.3f}"] for i in range(len(x))])
    results["inclusion"] = {"continued": inclusion.points.tolist()}
    for i in range(len(x)):  # four points: each judged against its own Monte Carlo error (a t test over 4 points needs 9.2 SE)
        report.claim("q*_flow fits the true posterior better than q*_FFG", judge_monte_carlo(
            "L[q*_flow] > L[q*_FFG]", float(fits["q*_flow"].elbo.value[i]), float(fits["q*_flow"].elbo.stderr[i]),
            float(fits["q*_FFG"].elbo.value[i]), float(fits["q*_FFG"].elbo.stderr[i])).to_dict(), f"datapoint {i}")
    report.text(f"Grids: first {b.grid_points}² cells over [−{bound:g}, {bound:g}]² for all four points (its log p(x): "
                f"{', '.join(f'{v:.3f}' for v in coarse.log_px.tolist())}), then for each point {b.grid_points}² cells over the square "
                f"holding its posterior's mean ± {ZOOM_SDS:g} sd on each axis (" + "; ".join(" × ".join(f"[{lo:.2f}, {hi:.2f}]" for lo, hi in _rectangle(g)) for g in grids)
                + "); the table's grid log p(x) and every panel are on the point's own grid.")
    report.figure(FIGURES[0], lambda path: _figure([g.axes for g in grids], densities, bounds, path), "true posterior, q, q*_FFG and q*_flow of four digits")
    return report


def _rectangle(grid) -> list[list[float]]:
    """The grid's bounds, one [low, high] per axis."""
    return [[float(a[0]) - w / 2, float(a[-1]) + w / 2] for a, w in zip(grid.axes, grid.widths)]


def _figure(axes_of_points: list[torch.Tensor], densities, bounds, path: str) -> None:
    n = len(axes_of_points)
    fig, axes = plt.subplots(n, len(PANELS), figsize=(3.2 * len(PANELS), 3.0 * n), squeeze=False, layout="constrained")
    for i in range(n):
        first, second = axes_of_points[i]
        true = densities["true posterior"][i].exp()
        mass = true / true.sum()
        mean = [float((mass.sum(1) * first).sum()), float((mass.sum(0) * second).sum())]
        sd = [math.sqrt(float((mass.sum(1) * (first - mean[0]) ** 2).sum())), math.sqrt(float((mass.sum(0) * (second - mean[1]) ** 2).sum()))]
        half = [4 * max(s, float(a[1] - a[0])) for s, a in zip(sd, (first, second))]  # zoomed to the posterior, never below a cell
        for j, panel in enumerate(PANELS):
            ax = axes[i, j]
            density = densities[panel][i].exp().numpy()
            ax.contour(first.numpy(), second.numpy(), density.T, levels=8, cmap="viridis")  # [a, b] at (first[a], second[b])
            ax.set_xlim(mean[0] - half[0], mean[0] + half[0])
            ax.set_ylim(mean[1] - half[1], mean[1] + half[1])
            what = "log p(x)" if panel == "true posterior" else "ELBO"
            ax.set_title(f"{panel}\n{what} {float(bounds[panel][i]):.2f}", fontsize=9)
            ax.tick_params(labelsize=7)
    save_figure(fig, path)
