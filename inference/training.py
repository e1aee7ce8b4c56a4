"""SVI training on Lightning Fabric: our loop, Fabric's devices and strategies.

The loss is the objective's (:func:`inference.objectives.make_loss`: Pyro's ``ELBOModule`` for
``Trace_ELBO`` and friends, or our own estimators) with a plain ``torch.optim.Adam``. Lightning
Fabric places it on the devices and runs DDP (``devices``, ``strategy``, its launchers); the loop
around it (:func:`fit`) is ours: a step is the loss, ``backward``, the optimizer step and nothing
else, where Lightning's ``Trainer`` added about a millisecond of hooks and bookkeeping. Checkpoints
(atomic, read with ``weights_only=True``; the keys of Lightning's, so checkpoints of the earlier
``Trainer``-based loop resume too), CSV metrics and progress bars are the loop's.

Batches come from a tensor kept on the training device: each epoch draws a
permutation from a generator seeded by ``(seed, epoch)`` and reseeds the
sampling noise, so a run resumed from an epoch checkpoint continues exactly as
the uninterrupted run would have. Under DDP each rank takes its share of the
epoch's batches.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyro
import torch
from lightning.fabric import Fabric
from lightning.fabric.strategies import DDPStrategy
from torch import nn

from ppl_models.registry import build_model

from .distributed import TIMEOUT as dist_timeout
from .io import CheckpointError, atomic_torch_save, atomic_write_text, load_checkpoint
from .objectives import PARAMETERS, get_objective, kl_weight, make_loss
from .objectives.semi_amortized import check_inner_optimizer
from .program import check_data, inspect_program
from .validation import nonnegative_int, nonnegative_number, positive_int, positive_number
from .validation import seed as check_seed

#: constant; iwae: Burda et al.'s 3^i-epoch stages (3280 epochs); iwae-even: the same eight learning rates, each for an
#: equal share of the run's epochs (a shorter budget's version of the schedule)
LR_SCHEDULES = ("constant", "iwae", "iwae-even")
#: What a warm-up weight beta < 1 scales: the KL term (log p(z) - log q), or the entropy term (-log q) alone.
WARMUPS = ("kl", "entropy")
DEVICES = ("cpu", "cuda", "auto")
CHECKPOINT_KEYS = ("state_dict", "config", "model_state", "guide_state")


@dataclass
class TrainOptions:
    """Everything that determines a training run (recorded in every checkpoint)."""

    objective: str = "elbo"
    num_particles: int = 1
    epochs: int = 100
    batch_size: int = 100
    lr: float = 1e-3
    adam_eps: float = 1e-4  # Burda et al. (2016) use epsilon = 1e-4
    lr_schedule: str = "constant"
    kl_warmup_epochs: float = 0.0
    seed: int = 0
    warmup: str = "kl"  #: "kl" (Bowman et al. 2016) or "entropy" (only -log q scaled, as Cremer et al.'s code does)
    beta: float = 1.0  #: the KL weight of objective "beta-vae" (Higgins et al. 2017)
    free_bits: float = 0.0  #: the per-site KL floor, in nats, of objective "free-bits" (Kingma et al. 2016)
    svi_steps: int = 0  #: the refinement steps k of objective "sa-vae" (Kim et al. 2018)
    svi_lr: float = 1.0  #: the refinement step size of objective "sa-vae"
    svi_momentum: float = 0.5  #: objective "sa-vae": the refinement's momentum (v <- mu v + g; lambda <- lambda + lr v)
    svi_clip: str = "batch"  #: objective "sa-vae": refinement gradients clipped per tensor over the batch, or per datapoint
    svi_max_grad_norm: float = 5.0  #: objective "sa-vae": the norm the refinement's gradients are clipped to
    svi_reduction: str = "mean"  #: objective "sa-vae": the refinement ascends the batch's mean ELBO (Kim et al.'s code) or its sum
    svi_analytic_kl: bool = True  #: objective "sa-vae": closed-form KL terms where torch has them (Kim et al.'s code)
    decoder_through_refinement: bool = True  #: objective "sa-vae": the decoder's gradient through the refinement steps
    max_grad_norm: float = 0.0  #: clip the gradient of all trained parameters together to this norm before each step (0: none)

    def __post_init__(self) -> None:
        get_objective(self.objective).check_particles(self.objective, self.num_particles)
        positive_number(self.beta, "beta")
        nonnegative_number(self.free_bits, "free_bits")  # whether the objective takes them: make_loss (a base config may hold them)
        nonnegative_int(self.svi_steps, "svi_steps")
        positive_number(self.svi_lr, "svi_lr")
        positive_number(self.svi_max_grad_norm, "svi_max_grad_norm")
        check_inner_optimizer(self.svi_momentum, self.svi_clip, self.svi_reduction, self.svi_analytic_kl, self.decoder_through_refinement)
        nonnegative_number(self.max_grad_norm, "max_grad_norm")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
        nonnegative_int(self.epochs, "epochs")
        positive_int(self.batch_size, "batch_size")
        positive_number(self.lr, "lr")
        positive_number(self.adam_eps, "adam_eps")
        nonnegative_number(self.kl_warmup_epochs, "kl_warmup_epochs")
        check_seed(self.seed, "seed")
        if self.warmup not in WARMUPS:
            raise ValueError(f"unknown warmup {self.warmup!r}; choose from {', '.join(WARMUPS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def params(self) -> dict[str, float]:
        """The objective parameters (``inference.objectives.PARAMETERS``) of this configuration."""
        return {key: getattr(self, key) for key in PARAMETERS}


def iwae_lr_factor(epoch: int) -> float:
    """Burda et al. (2016): stage i lasts 3^i epochs with learning rate 1e-3 * 10^(-i/7), i = 0..7 (3280 epochs)."""
    stage, end = 0, 1
    while epoch >= end and stage < 7:
        stage += 1
        end += 3**stage
    return 10 ** (-stage / 7)


def iwae_even_lr_factor(epoch: int, epochs: int) -> float:
    """Burda et al.'s eight learning rates 1e-3 * 10^(-i/7), i = 0..7, each for an equal share of ``epochs``."""
    stage = min(7, (8 * epoch) // max(int(epochs), 1))
    return 10 ** (-stage / 7)


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """The learning-rate multiplier of ``schedule`` (:data:`LR_SCHEDULES`) at ``epoch`` of a run of ``epochs``."""
    if schedule == "constant":
        return 1.0
    if schedule == "iwae":
        return iwae_lr_factor(epoch)
    if schedule == "iwae-even":
        return iwae_even_lr_factor(epoch, epochs)
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose from {', '.join(LR_SCHEDULES)}")


def _seed_for(*parts: int) -> int:
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + int(part) + 1) % (2**63 - 1)
    return seed


def epoch_permutation(num_points: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which :func:`fit` (``TrainOptions(seed=seed)``) visits the training points in ``epoch``."""
    return torch.randperm(num_points, generator=torch.Generator().manual_seed(_seed_for(seed, epoch)))


def checks_every_step(device: torch.device) -> bool:
    """Whether training checks each step's loss before the update (CPU: reading it costs nothing), or once an epoch
    (an accelerator, where every read waits for the device queue to drain)."""
    return device.type == "cpu"


def batches_of_rank(num_batches: int, rank: int, world_size: int) -> list[int]:
    """The batch numbers of an epoch that rank ``rank`` of ``world_size`` trains on: r, r + W, …, the list first padded
    with its own beginning to a multiple of W (every rank takes as many steps; what ``DistributedSampler`` does)."""
    numbers = list(range(num_batches))
    numbers += numbers[: (-num_batches) % world_size]
    return numbers[rank::world_size]


class SVIModule(nn.Module):
    """The training state of one run: the loss ``make_loss(objective)(model, guide)`` averaged over the batch, the data on
    the device, the step and epoch counters, and :meth:`training_step`, which :func:`fit`'s loop calls once per batch."""

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module,
        train_x: torch.Tensor,
        config: TrainOptions,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        run_config: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.config = config
        self.run_config = dict(run_config or {})
        self.transform = transform
        self.model, self.guide = model, guide
        self.elbo = make_loss(config.objective, model, guide, config.num_particles, **config.params())
        # every objective counts the global factor B/N per batch of B (inference.objectives): N is the training set
        self.elbo.dataset_size = len(train_x)
        if config.warmup == "entropy" and config.kl_warmup_epochs > 0 and not hasattr(self.elbo, "set_entropy_scale"):
            raise ValueError(f"warmup 'entropy' scales the -log q term of a Monte Carlo ELBO; objective {config.objective!r} has none (use objective 'elbo')")
        # A plain attribute, not a buffer: DDP broadcasts every buffer before each forward (the whole
        # training set, 188 MB a step on MNIST); each rank moves its own copy to its device.
        self.train_x = train_x
        self.num_batches = math.ceil(len(train_x) / config.batch_size)
        self.epoch_losses: list[float] = []  #: this rank's mean training loss of every epoch run
        self.current_epoch = 0
        self.global_step = 0  #: optimizer steps taken (by this rank), over every epoch, resumed ones included
        self.max_epochs = config.epochs
        self.is_global_zero = True
        self.num_training_batches = self.num_batches  #: the batches this rank trains on per epoch (its share under DDP)
        self._perm: torch.Tensor | None = None
        self._fabric: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.elbo(x) / len(x)

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def attach(self, fabric: Any, wrapped: nn.Module, optimizer: Any) -> None:
        """The Fabric, the module as it wraps it (DDP: the gradients are averaged over ranks) and its optimizer."""
        self.__dict__.update(_fabric=fabric, _wrapped=wrapped, _optimizer=optimizer)  # kept out of the module registry
        self.is_global_zero = fabric.is_global_zero
        self.train_x = self.train_x.to(fabric.device)

    def start_epoch(self, epoch: int) -> None:
        self.current_epoch = epoch
        self._perm = epoch_permutation(len(self.train_x), self.config.seed, epoch).to(self.device)
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0
        self._check_every_step = checks_every_step(self.device)
        if not self._check_every_step:
            self._nonfinite = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=self.device)  # (batch of the epoch, loss)
            self._batches_seen = torch.zeros((), dtype=torch.float64, device=self.device)
            self._first_step_of_epoch = self.global_step
        # the sampling noise of each epoch (and rank) is seeded afresh, so a run resumed at an epoch continues exactly
        torch.manual_seed(_seed_for(self.config.seed, epoch, self._fabric.global_rank if self._fabric is not None else 0))

    def training_step(self, batch_number: int, batch_idx: int) -> torch.Tensor:
        b = int(batch_number)
        size = self.config.batch_size
        x = self.train_x[self._perm[b * size : (b + 1) * size]]
        if self.transform is not None:
            x = self.transform(x)
        beta = kl_weight(self.global_step, round(self.config.kl_warmup_epochs * self.num_batches))
        if self.config.warmup == "entropy":
            self.elbo.set_entropy_scale(beta)
        else:
            self.elbo.set_latent_scale(beta)
        loss = self._wrapped(x)
        if self._check_every_step:
            # before the step, so the parameters stay those of the last finite loss; under DDP every rank stops together
            if not self._all_ranks(bool(torch.isfinite(loss))):
                self._diverged(self._at(float(loss.detach()), self.global_step, batch_idx), "the parameters were not updated with it")
        else:
            # on an accelerator, reading the loss would wait for the device: note the epoch's first non-finite loss there
            first = self._nonfinite[0] < 0
            bad = ~torch.isfinite(loss.detach()) & first
            self._nonfinite = torch.where(bad, torch.stack([self._batches_seen, loss.detach().to(self._nonfinite.dtype)]), self._nonfinite)
            self._batches_seen += 1
        optimizer = self._optimizer
        optimizer.zero_grad()
        self._fabric.backward(loss)
        if self.config.max_grad_norm > 0:  # after backward: under DDP the gradients are already averaged over the ranks
            torch.nn.utils.clip_grad_norm_([p for p in self._wrapped.parameters() if p.grad is not None], self.config.max_grad_norm)
        optimizer.step()
        self.global_step += 1
        self._loss_sum += loss.detach() * len(x)
        self._loss_count += len(x)
        return loss

    def _all_ranks(self, decision: bool) -> bool:
        """``decision`` and-ed over every rank (itself in one process)."""
        if self._fabric is None or self._fabric.world_size == 1:
            return decision
        return bool(self._fabric.all_reduce(torch.tensor(float(decision), device=self.device), reduce_op="sum") == self._fabric.world_size)

    def _diverged(self, where: str, parameters: str) -> None:
        raise DivergenceError(
            f"training diverged: {where}; {parameters}. Lower the learning rate "
            f"(now {self.config.lr}) or check the programs for non-finite log densities"
        )

    def _at(self, loss: float, step: int, batch_idx: int) -> str:
        return f"the loss is {loss} at epoch {self.current_epoch}, step {step} (batch {batch_idx} of the epoch)"

    def end_epoch(self) -> float:
        """The epoch's checks and its mean loss over every rank (this rank's goes to ``epoch_losses``)."""
        if not self._check_every_step:  # one read an epoch, before the epoch's checkpoint
            batch, loss = self._nonfinite.tolist()
            if not self._all_ranks(batch < 0):
                where = (self._at(loss, self._first_step_of_epoch + int(batch), int(batch)) if batch >= 0
                         else f"another rank met a non-finite loss in epoch {self.current_epoch}")
                self._diverged(where, "on an accelerator the loss is checked once an epoch, so the steps after it "
                               "updated the parameters, and this epoch is not checkpointed")
        mean = self._loss_sum / max(self._loss_count, 1)
        self.epoch_losses.append(float(mean))
        if self._fabric is not None and self._fabric.world_size > 1:
            mean = self._fabric.all_reduce(mean, reduce_op="mean")
        return float(mean)


@contextlib.contextmanager
def _quiet_lightning():
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*litlogger.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        try:
            yield
        finally:
            for n, level in zip(names, levels):
                logging.getLogger(n).setLevel(level)


def accelerator_for(device: str) -> str:
    """Lightning's accelerator name for ``--device``; refuses cuda where there is none."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but torch.cuda.is_available() is False")
    return {"cpu": "cpu", "cuda": "gpu", "auto": "auto"}[device]


def resolve_device(device: str) -> torch.device:
    accelerator_for(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class DivergenceError(RuntimeError):
    """Training met a non-finite loss: it stops there, before the step, naming the epoch and step."""


@dataclass
class TrainResult:
    """What :func:`fit` returns."""

    model: nn.Module
    guide: nn.Module
    checkpoint_path: str | None  #: the last epoch's checkpoint (None without ``out_dir``)
    is_global_zero: bool  #: False on the extra ranks of a DDP run, which should stop after training
    epochs_run: int  #: the epoch count reached (a resumed run counts the earlier epochs too)
    losses: list[float] = dataclasses.field(default_factory=list)  #: mean training loss of each epoch this call ran


class Trained(NamedTuple):
    """A trained pair rebuilt from a checkpoint (:func:`load_trained`)."""

    model: nn.Module
    guide: nn.Module
    config: dict[str, Any]  #: the checkpoint's record: ``train`` (a TrainOptions dict), ``model``, ``data``


def load_trained(path: str, map_location: Any = "cpu") -> Trained:
    """Rebuild the ``(model, guide)`` pair a checkpoint of :func:`fit` records and load its weights.

    The pair is made by :func:`ppl_models.build_model` from the checkpoint's model config
    (a model of the zoo, or a ``package.module:factory`` that must be importable).
    """
    checkpoint = load_checkpoint(path, map_location=map_location, required=CHECKPOINT_KEYS)
    config = checkpoint["config"]
    if "model" not in config:
        raise CheckpointError(f"{path!r} records no model config, so the pair cannot be rebuilt; build it yourself and load 'model_state'")
    model, guide = build_model(config["model"])
    model.load_state_dict(checkpoint["model_state"])
    guide.load_state_dict(checkpoint["guide_state"])
    return Trained(model, guide, config)


def export_weights(checkpoint: str, path: str) -> None:
    """Write the trained pair of a :func:`fit` checkpoint without its optimizer and trainer state: a file a few MB in size
    that :func:`load_trained` and ``--checkpoint`` read like the full checkpoint (it cannot resume training)."""
    full = load_checkpoint(checkpoint, required=CHECKPOINT_KEYS)
    atomic_torch_save({"state_dict": {}, "config": full["config"], "model_state": full["model_state"], "guide_state": full["guide_state"],
                       "weights_only": True}, path)


def check_resume_config(checkpoint_config: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """Refuse to resume a run whose settings differ (other than the number of epochs)."""
    checkpoint_config = dict(checkpoint_config)
    if isinstance(checkpoint_config.get("train"), dict):  # settings added since the checkpoint was written take their defaults
        checkpoint_config["train"] = {**TrainOptions().to_dict(), **checkpoint_config["train"]}
    diffs = []
    for key in sorted(set(checkpoint_config) | set(current)):
        old, new = checkpoint_config.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            for sub in sorted(set(old) | set(new)):
                if sub != "epochs" and old.get(sub) != new.get(sub):
                    diffs.append(f"{key}.{sub}: checkpoint {old.get(sub)!r}, now {new.get(sub)!r}")
        elif old != new:
            diffs.append(f"{key}: checkpoint {old!r}, now {new!r}")
    if diffs:
        raise CheckpointError(f"cannot resume from {path!r}: its settings differ from this run ({'; '.join(diffs)})")


def _read_text(path: str | None) -> str | None:
    if path and os.path.exists(path):
        with open(path, newline="") as f:  # keep the csv module's \r\n line endings as they are
            return f.read()
    return None


def fit(
    model: nn.Module,
    guide: nn.Module,
    data: Any,
    config: TrainOptions = TrainOptions(),
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    out_dir: str | None = None,
    resume: bool = False,
    device: str = "cpu",
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
    progress: bool = False,
    run_config: dict[str, Any] | None = None,
    callbacks: tuple[Any, ...] | list[Any] = (),
) -> TrainResult:
    """Train ``(model, guide)`` on ``data`` by SVI with ``config``; returns a :class:`TrainResult` (losses, checkpoint path).

    ``data`` is a tensor of training points, or a data set with ``.train`` (the tensor) and
    ``.transform`` (what each training batch becomes, e.g. a fresh binarization; see
    :class:`benchmarks.datasets.Data`), which is then applied unless ``transform`` is given.
    ``model`` and ``guide`` must be ``nn.Module``s (their parameters are what is trained).

    With ``out_dir`` the last epoch is checkpointed to ``out_dir/checkpoints/last.ckpt``
    (atomically) and metrics go to ``out_dir/logs/metrics.csv``; ``resume=True``
    continues from that checkpoint. ``callbacks`` are objects with any of Lightning's ``Callback``
    hooks (``on_train_start``, ``on_train_epoch_start``, ``on_train_batch_start``,
    ``on_train_batch_end``, ``on_train_epoch_end``, ``on_train_end``; e.g. per-epoch evaluation),
    called with the training state (:class:`SVIModule`) for both the trainer and the module.

    The loop is ours, on Lightning Fabric: Fabric gives the devices, the strategies (``devices``,
    ``strategy="ddp"``: DDP, its launchers; ``num_nodes`` machines, each running the same command with
    ``NODE_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set) and ``backward``; the loop around them is a few lines.
    """
    if not isinstance(data, torch.Tensor) and hasattr(data, "train"):
        transform = getattr(data, "transform", None) if transform is None else transform
        data = data.train
    train_x = check_data(data, "training data")
    for name, program in (("model", model), ("guide", guide)):
        if not isinstance(program, nn.Module):
            raise TypeError(
                f"fit trains the parameters of nn.Module programs; the {name} is a {type(program).__name__}. Wrap it: "
                "a class deriving from nn.Module (or pyro.nn.PyroModule) whose forward(x) is the program, with its "
                "parameters as module parameters (pyro.param in a plain function lives outside any module)"
            )
    accelerator = accelerator_for(device)
    if positive_int(num_nodes, "num_nodes") > 1 and "ddp" not in str(strategy):
        raise ValueError(f"training on {num_nodes} machines needs a DDP strategy (strategy='ddp'), got strategy={strategy!r}")
    sample = train_x[: config.batch_size]
    inspect_program(model, guide, transform(sample) if transform is not None else sample)
    if transform is None:  # every datapoint is seen as it is: check them all once, not at every step
        for chunk in train_x.split(10_000):
            inspect_program(model, guide, chunk)
    run_config = dict(run_config or {})
    module = SVIModule(model, guide, train_x, config, transform, run_config)

    ckpt_dir = os.path.join(out_dir, "checkpoints") if out_dir else None
    last = os.path.join(ckpt_dir, "last.ckpt") if ckpt_dir else None
    saved = None
    if resume:
        if last is None or not os.path.exists(last):
            raise CheckpointError(f"--resume: no checkpoint to resume from at {last!r}")
        saved = load_checkpoint(last, required=CHECKPOINT_KEYS)
        check_resume_config(saved["config"], {"train": config.to_dict(), **run_config}, last)
    metrics_path = os.path.join(out_dir, "logs", "metrics.csv") if out_dir else None
    callbacks = list(callbacks)

    with _quiet_lightning(), pyro.validation_enabled(False):
        if strategy == "ddp":  # its group's collectives with our time limit, not Lightning's 30 minutes
            strategy = DDPStrategy(timeout=dist_timeout)
        fabric = Fabric(accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes)
        fabric.launch()  # DDP: the other ranks' processes start here (Lightning's launchers), and run this function too
        optimizer = torch.optim.Adam(module.elbo.parameters(), lr=config.lr, eps=config.adam_eps)
        scheduler = None
        if config.lr_schedule != "constant":
            schedule, epochs = config.lr_schedule, config.epochs
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(schedule, epoch, epochs))
        wrapped, fabric_optimizer = fabric.setup(module, optimizer)
        module.attach(fabric, wrapped, fabric_optimizer)
        first_epoch = 0
        if saved is not None:
            first_epoch = _restore(module, optimizer, scheduler, saved, last)
        rows = _metric_rows(metrics_path, first_epoch) if module.is_global_zero and metrics_path else None
        batches = batches_of_rank(module.num_batches, fabric.global_rank, fabric.world_size)
        module.num_training_batches = len(batches)
        _call(callbacks, "on_train_start", module, module)
        try:
            for epoch in range(first_epoch, config.epochs):
                module.start_epoch(epoch)
                _call(callbacks, "on_train_epoch_start", module, module)
                bar = _progress_bar(progress and module.is_global_zero, len(batches), epoch, config.epochs)
                for batch_idx, number in enumerate(batches):
                    _call(callbacks, "on_train_batch_start", module, module, number, batch_idx)
                    loss = module.training_step(number, batch_idx)
                    _call(callbacks, "on_train_batch_end", module, module, loss, number, batch_idx)
                    if bar is not None:
                        bar.update()
                mean = module.end_epoch()
                if bar is not None:
                    bar.set_postfix(train_loss=f"{mean:.3f}")
                    bar.close()
                _call(callbacks, "on_train_epoch_end", module, module)
                if scheduler is not None:
                    scheduler.step()
                def write(epoch: int = epoch, mean: float = mean) -> None:
                    if last is not None:  # the checkpoint first: a metrics row never names an epoch that was not saved
                        _save_checkpoint(fabric, last, module, optimizer, scheduler, epoch)
                    if rows is not None:
                        rows.append([epoch, module.global_step - 1, mean])
                        _write_metrics(metrics_path, rows)

                if last is not None or rows is not None:
                    _rank_zero_writes(fabric, write)
            _call(callbacks, "on_train_end", module, module)
        except DivergenceError as err:
            kept = f"; the last finished epoch's checkpoint is kept at {last}" if last and os.path.exists(last) else ""
            raise DivergenceError(f"{err}{kept}") from None
    epochs_run = max(config.epochs, first_epoch)
    return TrainResult(model, guide, last if ckpt_dir else None, module.is_global_zero, epochs_run, module.epoch_losses)


def _call(callbacks: list[Any], hook: str, *args: Any) -> None:
    """Call ``hook`` on every callback that has it (Lightning's ``Callback`` hook names and arguments; the training state,
    :class:`SVIModule`, stands for both the trainer and the module: ``current_epoch``, ``global_step``, ``max_epochs``,
    ``num_training_batches``, ``is_global_zero``, ``device``)."""
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)


def _restore(module: SVIModule, optimizer: torch.optim.Optimizer, scheduler: Any, saved: dict[str, Any], path: str) -> int:
    """Load a checkpoint's weights, optimizer and schedule into the run; returns the first epoch still to run."""
    try:
        module.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer_states"][0])
        if scheduler is not None and saved.get("lr_schedulers"):
            scheduler.load_state_dict(saved["lr_schedulers"][0])
    except (KeyError, IndexError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"cannot resume from {path!r}: its training state does not fit this run ({type(err).__name__}: {err})") from None
    module.global_step = int(saved.get("global_step", 0))
    return int(saved["epoch"]) + 1


def _save_checkpoint(fabric: Any, path: str, module: SVIModule, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int) -> None:
    """The finished epoch's checkpoint, written atomically by rank 0 (the keys Lightning's checkpoints had, so either resumes)."""
    atomic_torch_save({
        "epoch": epoch, "global_step": module.global_step, "state_dict": module.state_dict(),
        "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [scheduler.state_dict()] if scheduler is not None else [],
        "config": {"train": module.config.to_dict(), **module.run_config},
        "model_state": module.model.state_dict(), "guide_state": module.guide.state_dict(),
    }, path)


def _rank_zero_writes(fabric: Any, write: Callable[[], None]) -> None:
    """``write()`` on rank 0 alone; a failure there (disk full, permissions) is raised on every rank, so that none is
    left waiting for rank 0 at the next collective (NCCL would wait for its timeout)."""
    error = None
    if fabric.is_global_zero:
        try:
            write()
        except Exception as err:
            error = err
    if fabric.world_size > 1:
        message = fabric.broadcast(None if error is None else f"{type(error).__name__}: {error}", src=0)
        if error is None and message is not None:
            raise RuntimeError(f"rank 0 could not write the epoch's checkpoint or metrics ({message})")
    if error is not None:
        raise error


METRIC_COLUMNS = ("epoch", "step", "train_loss")


def _metric_rows(path: str, first_epoch: int) -> list[list[Any]]:
    """The metrics rows of the epochs before ``first_epoch`` (a resumed run keeps them; later ones, unsaved, are dropped)."""
    text = _read_text(path) if first_epoch > 0 else None
    if not text:
        return []
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(rows[0]) != METRIC_COLUMNS:
        return []
    return [row for row in rows[1:] if row and row[0].isdigit() and int(row[0]) < first_epoch]


def _write_metrics(path: str, rows: list[list[Any]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out)  # "\r\n" line endings, as Lightning's CSV logger wrote them
    writer.writerow(METRIC_COLUMNS)
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


def _progress_bar(show: bool, total: int, epoch: int, epochs: int) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", leave=False, mininterval=0.5, dynamic_ncols=True)
