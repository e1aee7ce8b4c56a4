"""Compare training objectives on one model/guide pair: same initialization, data order, seed and budget; one table.

:func:`compare_objectives` takes a *factory* that builds a fresh ``(model, guide)`` pair
(any pair following the convention: the zoo's or your own), the data, the objectives ×
K grid and a :class:`~inference.training.TrainOptions`, trains every (objective, K) from
the same initial parameters on the same batches, and measures on the test points:

* log p̂(x): the importance-weighted bound with ``log_px_samples`` samples;
* the ELBO of the trained guide;
* active units (Burda et al. 2016): latent units whose posterior mean varies over the
  test data by more than 0.01;
* the gradient signal-to-noise ratio of the encoder (guide) and decoder (model)
  parameters under the objective's own estimator, on one fixed training batch
  (Rainforth et al. 2018);
* wall time per training step, and the learning curve: the IWAE bound with
  ``curve_samples`` samples on ``curve_points`` test points after every epoch (and every
  ``curve_steps`` steps).

Pairs that make no sense (``tracegraph`` with K > 1, ``vimco`` with K = 1, ...) are
skipped with the reason. ``benchmarks.compare`` is this function's command line.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import lightning.pytorch as pl
import pyro
import torch
from torch import nn

from .claims import judge
from .diagnostics import active_units, gradient_snr
from .estimators import elbo, iwae_log_px
from .io import atomic_write_json
from .objectives import PARAMETERS, get_objective, make_loss
from .sampling import fork_rng, set_seed
from .stats import mean_se
from .training import TrainOptions, fit, resolve_device
from .validation import positive_int

PairFactory = Callable[[], tuple[nn.Module, nn.Module]]


@dataclass(frozen=True)
class CompareOptions:
    """How the trained pairs are measured."""

    test_points: int | None = None  #: test datapoints to evaluate (None: all)
    log_px_samples: int = 5000  #: K of the test log p̂(x)
    elbo_samples: int = 100  #: samples of the test ELBO
    snr_draws: int = 100  #: gradient draws of the SNR
    curve_points: int = 500  #: test points of the learning curve
    curve_samples: int = 100  #: K of the learning curve's IWAE bound
    curve_steps: int | None = None  #: also evaluate the curve every this many steps (None: once per epoch)
    max_elements: int | None = None  #: memory budget per chunk of samples (None: the device's default, inference.memory)
    curve_epochs: int = 1  #: evaluate the curve at the end of every this many epochs (and of the last)

    def __post_init__(self) -> None:
        for key in ("log_px_samples", "elbo_samples", "snr_draws", "curve_points", "curve_samples", "curve_epochs"):
            positive_int(getattr(self, key), key)
        for key in ("test_points", "curve_steps", "max_elements"):
            if getattr(self, key) is not None:
                positive_int(getattr(self, key), key)
        if self.snr_draws < 2:
            raise ValueError(f"snr_draws must be >= 2 to measure a standard deviation, got {self.snr_draws}")


class Split(NamedTuple):
    """Training and test points given as tensors (already in the form the likelihood sees, but for ``transform``)."""

    train: torch.Tensor
    test: torch.Tensor
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def eval_points(self, split: str, num_points: int) -> torch.Tensor:
        data = self.train if split == "train" else self.test
        if num_points > len(data):
            raise ValueError(f"num_points={num_points} exceeds the {split} split ({len(data)} points)")
        return data[:num_points]


class Comparison(NamedTuple):
    """What :func:`compare_objectives` returns: one record per trained (objective, K), and the skipped pairs with reasons."""

    runs: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    options: CompareOptions


class LearningCurve(pl.Callback):
    """The IWAE bound with ``samples`` samples on fixed test points after every ``every_epochs`` epochs (and the last, and
    every ``every_steps`` steps), against steps, epochs and wall-clock time: ``train_seconds`` is the time spent in
    training steps so far (the evaluations themselves not counted).

    With a ``path`` the points are kept there (rewritten atomically after each), so a resumed run keeps its
    earlier ones and its clock continues from the last point. The evaluation draws from a forked random generator:
    training sees the same random numbers with or without it.
    """

    def __init__(self, model, guide, x: torch.Tensor, samples: int, seed: int, max_elements: int | None, path: str | None = None,
                 every_steps: int | None = None, every_epochs: int = 1):
        super().__init__()
        self.model, self.guide, self.x, self.samples, self.seed, self.max_elements = model, guide, x, samples, seed, max_elements
        self.path, self.every_steps, self.every_epochs = path, every_steps, positive_int(every_epochs, "every_epochs")
        self.points: list[dict[str, float]] = []
        if path and os.path.exists(path):
            with open(path) as f:
                self.points = json.load(f)
        self.clock = float(self.points[-1].get("train_seconds", 0.0)) if self.points else 0.0  #: training-step seconds so far
        self.step_seconds = 0.0
        self.steps = 0
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        seconds = time.perf_counter() - self._t0
        self.step_seconds += seconds
        self.clock += seconds
        self.steps += 1
        step = trainer.global_step
        if self.every_steps and step % self.every_steps == 0 and batch_idx + 1 < trainer.num_training_batches:
            self._evaluate(trainer, pl_module, step)  # (the last batch of an epoch is evaluated at the epoch's end)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_epochs == 0 or epoch >= trainer.max_epochs:
            self._evaluate(trainer, pl_module, trainer.global_step)

    def _evaluate(self, trainer, pl_module, step: int) -> None:
        if not trainer.is_global_zero:
            return
        with fork_rng(pl_module.device):  # the device's generator too: on a GPU, training noise must not depend on this
            set_seed(self.seed * 7919 + step)
            value = iwae_log_px(self.model, self.guide, self.x.to(pl_module.device), self.samples, max_elements=self.max_elements).value
        epoch = trainer.current_epoch + (step - trainer.current_epoch * trainer.num_training_batches) / trainer.num_training_batches
        bound, bound_se = mean_se(value)
        self.points.append({"step": step, "epoch": round(epoch, 4), "train_seconds": round(self.clock, 3), "bound": bound, "bound_se": bound_se})
        if self.path:
            atomic_write_json(self.path, self.points)


def parameter_groups(model, guide) -> dict[str, list[torch.nn.Parameter]]:
    """Decoder = the model's parameters; encoder = the guide's, without baseline networks (fitted, not estimated)."""
    decoder = [p for p in model.parameters() if p.requires_grad]
    encoder = [p for n, p in guide.named_parameters() if p.requires_grad and "baseline" not in n]
    return {"encoder": encoder, "decoder": decoder}


def evaluate(model, guide, objective: str, k: int, x_test: torch.Tensor, snr_batch: torch.Tensor, options: CompareOptions,
             seed: int, params: dict[str, float] | None = None) -> dict[str, Any]:
    """Test log p̂(x), test ELBO, active units and gradient SNR of a trained pair."""
    set_seed(seed + 1)
    log_px = iwae_log_px(model, guide, x_test, options.log_px_samples, max_elements=options.max_elements)
    mean, se = mean_se(log_px.value)
    out: dict[str, Any] = {"test_log_px": {"mean": mean, "se": se, "mc_se": float(log_px.stderr.pow(2).mean().sqrt() / math.sqrt(len(x_test)))}}
    set_seed(seed + 2)
    bound = elbo(model, guide, x_test, options.elbo_samples, max_elements=options.max_elements)
    mean, se = mean_se(bound.value)
    out["test_elbo"] = {"mean": mean, "se": se}
    out["per_point"] = {"test_log_px": [float(v) for v in log_px.value], "test_elbo": [float(v) for v in bound.value]}
    set_seed(seed + 3)
    units = active_units(model, guide, x_test[: min(len(x_test), 1000)])
    out["active_units"] = {"active": units.active, "total": units.total, "per_site": {n: list(v) for n, v in units.per_site.items()}}
    set_seed(seed + 4)
    loss = make_loss(objective, model, guide, k, **(params or {}))
    snr = gradient_snr(lambda x: loss(x) / len(x), snr_batch, parameter_groups(model, guide), options.snr_draws)
    out["snr"] = {group: {"mean": s.mean, "median": s.median, "components": s.components} for group, s in snr.items()}
    return out


def _read_train_loss(run_dir: str) -> list[float]:
    """The training loss of every epoch, from the run's CSV log (which survives resume)."""
    path = os.path.join(run_dir, "logs", "metrics.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [float(row["train_loss"]) for row in csv.DictReader(f) if row.get("train_loss")]


def _as_data(data: Any) -> Any:
    if isinstance(data, tuple) and not hasattr(data, "eval_points"):
        return Split(*data)
    return data


def train_one(
    make_pair: PairFactory, objective: str, k: int, data: Any, base: TrainOptions, options: CompareOptions, *,
    out_dir: str | None = None, resume: bool = False, device: str = "cpu", progress: bool = False, run_config: dict | None = None,
) -> dict[str, Any]:
    """Train and evaluate one (objective, K) from the shared initialization (``make_pair`` under the base seed)."""
    run_dir = os.path.join(out_dir, "runs", f"{objective}-K{k}") if out_dir else None
    done = os.path.join(run_dir, "run.json") if run_dir else None
    if resume and done and os.path.exists(done):
        with open(done) as f:
            record = json.load(f)
        if record.get("num_particles") == k and isinstance(record.get("test_log_px"), dict) and "per_point" in record:
            return record
        # a record in an earlier layout: its training is finished (the checkpoint continues at the last epoch), measure again
    pyro.clear_param_store()
    set_seed(base.seed)
    model, guide = make_pair()  # the same initial parameters for every run
    if hasattr(model, "init_from_data"):
        model.init_from_data(data.train, torch.Generator().manual_seed(base.seed))
    entry = get_objective(objective)
    warmup = base.kl_warmup_epochs if entry.warmup else 0.0
    params = {key: (value if key in entry.params else PARAMETERS[key]) for key, value in base.params().items()}  # its own only
    train = TrainOptions(**{**base.to_dict(), "objective": objective, "num_particles": k, "kl_warmup_epochs": warmup, **params})
    x_curve = data.eval_points("test", min(options.curve_points, len(data.test)))
    resume_run = bool(resume and run_dir and os.path.exists(os.path.join(run_dir, "checkpoints", "last.ckpt")))
    curve_path = os.path.join(run_dir, "curve.json") if run_dir else None
    if curve_path and not resume_run and os.path.exists(curve_path):
        os.remove(curve_path)  # a fresh run: an earlier run's curve does not belong to it
    curve = LearningCurve(model, guide, x_curve, options.curve_samples, base.seed, options.max_elements, curve_path, options.curve_steps,
                          options.curve_epochs)
    t0 = time.perf_counter()
    trained = fit(model, guide, data.train, train, transform=data.transform, out_dir=run_dir, resume=resume_run, device=device,
                  progress=progress, run_config=run_config, callbacks=[curve])
    train_seconds = time.perf_counter() - t0
    torch_device = resolve_device(device)
    model.to(torch_device).eval()
    guide.to(torch_device).eval()
    x_test = data.eval_points("test", options.test_points or len(data.test)).to(torch_device)
    snr_batch = data.eval_points("train", min(base.batch_size, len(data.train))).to(torch_device)
    t0 = time.perf_counter()
    evaluated = evaluate(model, guide, objective, k, x_test, snr_batch, options, base.seed, train.params())
    result = {
        "objective": objective, "num_particles": k, "train": train.to_dict(), "train_seconds": train_seconds,
        "evaluate_seconds": time.perf_counter() - t0,
        "steps": curve.steps, "seconds_per_step": curve.step_seconds / max(curve.steps, 1), **evaluated,
        "curve": curve.points,
        "train_loss": _read_train_loss(run_dir) if run_dir else trained.losses,
    }
    if done:
        atomic_write_json(done, result)
    return result


def check_factory(make_pair: Any) -> PairFactory:
    """``make_pair`` if it is callable; a pair or anything else is refused with what was expected. Its result is checked
    too, on every call (:func:`fresh_pair`)."""
    if isinstance(make_pair, (tuple, list)):
        raise TypeError(f"compare_objectives takes a factory, a function returning a fresh (model, guide) pair (every run starts "
                        f"from a new one), not a {type(make_pair).__name__} of {len(make_pair)} object(s): pass e.g. "
                        "lambda: (Model(), Guide())")
    if not callable(make_pair):
        raise TypeError(f"compare_objectives takes a factory returning a fresh (model, guide) pair, got a {type(make_pair).__name__}")

    def fresh_pair():
        pair = make_pair()
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(callable(p) for p in pair)):
            raise TypeError(f"the pair factory {getattr(make_pair, '__name__', make_pair)!r} must return a (model, guide) pair of "
                            f"callables; it returned {type(pair).__name__} {str(pair)[:80]!r}")
        return pair

    return fresh_pair


def compare_objectives(
    make_pair: PairFactory,
    data: Any,
    objectives: Sequence[str],
    num_particles: Sequence[int] = (1,),
    train: TrainOptions = TrainOptions(epochs=20),
    options: CompareOptions = CompareOptions(),
    *,
    out_dir: str | None = None,
    resume: bool = False,
    device: str = "cpu",
    progress: bool = False,
    run_config: dict | None = None,
    on_start: Callable[[str, int], None] | None = None,
) -> Comparison:
    """Train a fresh pair from ``make_pair`` for every (objective, K) of ``objectives`` × ``num_particles`` and measure it.

    ``make_pair()`` must return a fresh ``(model, guide)`` of ``nn.Module``s; it is called with
    the random seed set to ``train.seed``, so every run starts from the same parameters.
    ``data`` is ``(train, test)`` tensors, or a data set with ``train``, ``test``, ``transform``
    and ``eval_points(split, n)`` (:class:`benchmarks.datasets.Data`). ``train`` is the budget
    shared by every run (its objective, K and, where warm-up does not apply, warm-up are
    replaced per run). With ``out_dir`` each run trains in ``out_dir/runs/<objective>-K<k>/``
    (checkpoints, CSV logs) and ``resume=True`` reuses finished runs and continues unfinished
    ones. Returns a :class:`Comparison`; every number is a ``{"mean", "se"}`` where it has an error.
    """
    make_pair = check_factory(make_pair)
    if isinstance(objectives, str):  # "elbo,iwae" once iterated letters ("unknown objective 'e'")
        objectives = [name.strip() for name in objectives.split(",") if name.strip()]
    data = _as_data(data)
    for name in objectives:
        get_objective(name)
    for k in num_particles:
        positive_int(k, "each K in num_particles")
    if options.test_points is not None:
        data.eval_points("test", options.test_points)  # refuses an impossible size before any training
    with torch.random.fork_rng(devices=[]):  # a pair and a batch to check each objective's needs on, the seed untouched
        model, guide = make_pair()
        sample = data.eval_points("train", min(train.batch_size, len(data.train)))
        if data.transform is not None:
            sample = data.transform(sample)
    runs, skipped = [], []
    for objective in objectives:
        for k in num_particles:
            try:
                get_objective(objective).check_particles(objective, k)
                get_objective(objective).check_pair(objective, model, guide, sample)
            except ValueError as err:
                skipped.append({"objective": objective, "num_particles": k, "reason": str(err)})
                continue
            if on_start is not None:
                on_start(objective, k)
            runs.append(train_one(make_pair, objective, k, data, train, options, out_dir=out_dir, resume=resume, device=device,
                                  progress=progress, run_config=run_config))
    if not runs:
        raise ValueError("no (objective, K) pair can run: " + "; ".join(s["reason"] for s in skipped))
    add_paired_differences(runs)
    return Comparison(runs, skipped, options)


def add_paired_differences(runs: list[dict[str, Any]]) -> None:
    """Give every run after the first its paired verdicts against the first on the same test points: ``run["paired"]``.

    "run > first" for the test log p̂(x) and the test ELBO (:func:`inference.claims.judge`): two
    models evaluated on the same points are compared point by point, not by overlapping error bars.
    """
    if not runs:
        return
    first = runs[0]
    label = lambda r: f"{r['objective']} K={r['num_particles']}"  # noqa: E731
    for run in runs[1:]:
        run["paired"] = {
            "against": label(first),
            **{key: judge(f"{label(run)} {key.replace('_', ' ')} > {label(first)}", torch.tensor(run["per_point"][key]),
                          torch.tensor(first["per_point"][key])).to_dict()
               for key in ("test_log_px", "test_elbo")},
        }

