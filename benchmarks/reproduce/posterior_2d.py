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
from inference.claims import judge
from inference.estimators import elbo, iwae_log_px
from inference.grid import grid_posterior, guide_on_grid
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
    """The grid posterior over [-bound, bound]^2, the bound doubled (up to four times) while the grid cuts off mass."""
    grid, (_, high) = _widened(model, guide, x, -bound, bound, points, max_elements, tries=4)
    return grid, high


#: The zoomed grid of a datapoint spans its posterior's mean ± this many standard deviations (of the coarse grid).
ZOOM_SDS = 8.0


def zoomed_grids(model, guide, x, coarse, points: int, max_elements: int, rounds: int = 8) -> list:
    """Per datapoint, a grid of ``points``² cells over the square holding its posterior's mean ± :data:`ZOOM_SDS` standard
    deviations: a posterior a few cells of the ``coarse`` grid wide (MNIST's) gets ``points``² cells of its own, so the grid's
    log p(x) is no longer limited by the coarse cells. The square is found by zooming in from the coarse grid until the cells
    resolve the posterior (a cell below a quarter of its standard deviation), and doubles while it cuts off mass."""
    out = []
    for i in range(len(x)):
        grid = _one_point(coarse, i)
        for _ in range(rounds):
            sd, cell = float(grid.std()[0].max()), float(grid.axis[1] - grid.axis[0])
            if cell <= sd / 4:
                break
            mean = grid.mean()[0]
            half = ZOOM_SDS * max(sd, cell / 2)
            grid, _ = _widened(model, guide, x[i : i + 1], float(mean.min()) - half, float(mean.max()) + half, points, max_elements)
        out.append(grid)
    return out


def _one_point(grid, i: int):
    return grid._replace(log_joint=grid.log_joint[i : i + 1], log_px=grid.log_px[i : i + 1], edge_mass=grid.edge_mass[i : i + 1])


def _widened(model, guide, x, low: float, high: float, points: int, max_elements: int, tries: int = 3):
    """The grid posterior over [low, high]² and its bounds, the square doubled about its centre (up to ``tries`` times) while
    it cuts off mass; the last try's refusal is raised."""
    for _ in range(tries):
        try:
            return grid_posterior(model, guide, x, (low, high), points, max_elements=max_elements), (low, high)
        except ValueError:
            centre, half = (low + high) / 2, high - low
            low, high = centre - half, centre + half
    return grid_posterior(model, guide, x, (low, high), points, max_elements=max_elements), (low, high)


def run(runner) -> Report:
    b = runner.budget
    model, guide, _ = trained_2d(runner)
    x = runner.points("test", NUM_POINTS)
    coarse, bound = wide_enough_grid(model, guide, x, b.grid_bound, b.grid_points, b.max_elements)
    grids = zoomed_grids(model, guide, x, coarse, b.grid_points, b.max_elements)
    fits = {"q*_FFG": local_posterior(model, guide, x, runner.local_options(), family="ffg", eval_samples=b.elbo_samples),
            "q*_flow": local_posterior(model, guide, x, runner.local_options(), family=FLOW, eval_samples=b.elbo_samples)}
    log_px_grid = torch.cat([g.log_px for g in grids])
    densities = {"true posterior": [g.log_posterior[0] for g in grids],
                 "amortized q": [guide_on_grid(guide, model, x[i : i + 1], g.axis)[0] for i, g in enumerate(grids)]}
    bounds = {"true posterior": log_px_grid, "amortized q": elbo(model, guide, x, b.elbo_samples).value}
    for label, fit in fits.items():
        densities[label] = [guide_on_grid(fit.guide.subset(torch.tensor([i])), model, x[i : i + 1], g.axis)[0] for i, g in enumerate(grids)]
        bounds[label] = fit.elbo.value
    iwae = iwae_log_px(model, guide, x, max(b.log_px_samples, 16))
    agree = ((log_px_grid - iwae.value).abs() <= 3 * iwae.stderr + 1e-6).tolist()
    results = {
        "grid": {"bound": bound, "points": b.grid_points, "edge_mass": coarse.edge_mass.tolist(),
                 "zoomed": [{"bounds": [float(g.axis[0]), float(g.axis[-1])], "edge_mass": float(g.edge_mass[0])} for g in grids]},
        "per_point": {"log_px_grid": log_px_grid.tolist(), "log_px_coarse_grid": coarse.log_px.tolist(), "log_px_iwae": iwae.value.tolist(),
                      "log_px_iwae_se": iwae.stderr.tolist(), "grid_agrees_with_iwae": agree,
                      **{f"elbo {k}": v.tolist() for k, v in bounds.items() if k != "true posterior"}},
    }
    report = Report(NAME, TITLE, results)
    report.table(["datapoint", "log p(x), grid", "log p(x), IWAE", "agree (3 SE)", "L[q]", "L[q*_FFG]", "L[q*_flow]"],
                 [[i, f"{log_px_grid[i]:.3f}", f"{iwae.value[i]:.3f} ± {iwae.stderr[i]:.3f}", "yes" if agree[i] else "no",
                   f"{bounds['amortized q'][i]:.3f}", f"{bounds['q*_FFG'][i]:.3f}", f"{bounds['q*_flow'][i]:.3f}"] for i in range(len(x))])
    if len(x) > 1:
        report.claim("q*_flow fits the true posterior better than q*_FFG", judge("L[q*_flow] > L[q*_FFG]", bounds["q*_flow"], bounds["q*_FFG"]).to_dict(),
                     f"{len(x)} points")
    report.text(f"Grids: first {b.grid_points}² cells over [−{bound:g}, {bound:g}]² for all four points (its log p(x): "
                f"{', '.join(f'{v:.3f}' for v in coarse.log_px.tolist())}), then for each point {b.grid_points}² cells over the square "
                f"holding its posterior's mean ± {ZOOM_SDS:g} sd (" + "; ".join(f"[{float(g.axis[0]):.2f}, {float(g.axis[-1]):.2f}]²" for g in grids)
                + "); the table's grid log p(x) and every panel are on the point's own grid.")
    report.figure(FIGURES[0], lambda path: _figure([g.axis for g in grids], densities, bounds, path), "true posterior, q, q*_FFG and q*_flow of four digits")
    return report


def _figure(axes_of_points: list[torch.Tensor], densities, bounds, path: str) -> None:
    n = len(axes_of_points)
    fig, axes = plt.subplots(n, len(PANELS), figsize=(3.2 * len(PANELS), 3.0 * n), squeeze=False, layout="constrained")
    for i in range(n):
        axis = axes_of_points[i]
        a = axis.numpy()
        true = densities["true posterior"][i].exp()
        mass = true / true.sum()
        mean = [float((mass.sum(1) * axis).sum()), float((mass.sum(0) * axis).sum())]
        sd = [math.sqrt(float((mass.sum(1) * (axis - mean[0]) ** 2).sum())), math.sqrt(float((mass.sum(0) * (axis - mean[1]) ** 2).sum()))]
        half = 4 * max(sd + [float(axis[1] - axis[0])])  # zoomed to the posterior, never below a cell
        for j, panel in enumerate(PANELS):
            ax = axes[i, j]
            density = densities[panel][i].exp().numpy()
            ax.contour(a, a, density.T, levels=8, cmap="viridis")  # [a, b] at (axis[a], axis[b]): z1 across, z2 up
            ax.set_xlim(mean[0] - half, mean[0] + half)
            ax.set_ylim(mean[1] - half, mean[1] + half)
            what = "log p(x)" if panel == "true posterior" else "ELBO"
            ax.set_title(f"{panel}\n{what} {float(bounds[panel][i]):.2f}", fontsize=9)
            ax.tick_params(labelsize=7)
    save_figure(fig, path)
