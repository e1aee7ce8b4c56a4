"""SVI training driven by PyTorch Lightning.

The loss is Pyro's :class:`~pyro.infer.elbo.ELBOModule` (the route of Pyro's own
``svi_lightning`` example), or its captured equivalent, with a plain ``torch.optim.Adam``: multi-device DDP,
checkpoints, progress bars and CSV logs come from Lightning's ``Trainer``.

Batches come from a tensor kept on the training device: each epoch draws a
permutation from a generator seeded by ``(seed, epoch)`` and reseeds the
sampling noise, so a run resumed from an epoch checkpoint continues exactly as
the uninterrupted run would have. Under DDP each rank takes its share of the
epoch's batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import lightning.pytorch as pl
import pyro
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from ppl_models.registry import build_model

from .io import CheckpointError, atomic_torch_save, atomic_write_text, load_checkpoint
from .objectives import PARAMETERS, get_objective, kl_weight, make_loss
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

    def __post_init__(self) -> None:
        get_objective(self.objective).check_particles(self.objective, self.num_particles)
        positive_number(self.beta, "beta")
        nonnegative_number(self.free_bits, "free_bits")  # whether the objective takes them: make_loss (a base config may hold them)
        nonnegative_int(self.svi_steps, "svi_steps")
        positive_number(self.svi_lr, "svi_lr")
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


class _BatchNumbers(torch.utils.data.Dataset):
    """Yields batch numbers; the module slices the on-device data itself."""

    def __init__(self, num_batches: int):
        self.num_batches = num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> int:
        return index


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes atomically and reads with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return load_checkpoint(path, map_location or "cpu", required=CHECKPOINT_KEYS)


class SVIModule(pl.LightningModule):
    """A Lightning module whose loss is ``ELBOModule(model, guide)`` averaged over the batch."""

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
        # training set, 188 MB a step on MNIST); each rank moves its own copy to its device in on_fit_start().
        self.train_x = train_x
        self.num_batches = math.ceil(len(train_x) / config.batch_size)
        self._perm: torch.Tensor | None = None
        self.epoch_losses: list[float] = []  #: this rank's mean training loss of every epoch run
        # One optimizer, no closures or gradient accumulation: stepping it ourselves skips
        # Lightning's automatic-optimization machinery, a large part of its per-step overhead.
        self.automatic_optimization = False

    def on_fit_start(self) -> None:
        self.train_x = self.train_x.to(self.device)  # the device Lightning gave this rank (the module is already there)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # a batch *number*: the data already sit on the device

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(_BatchNumbers(self.num_batches), batch_size=None, shuffle=False)

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        self._perm = epoch_permutation(len(self.train_x), self.config.seed, epoch).to(self.device)
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0
        self._check_every_step = checks_every_step(self.device)
        if not self._check_every_step:
            self._nonfinite = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=self.device)  # (batch of the epoch, loss)
            self._batches_seen = torch.zeros((), dtype=torch.float64, device=self.device)
            self._first_step_of_epoch = self.global_step

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Reseed the sampling noise at the epoch's first batch, after Lightning has made its
        # data iterator (which draws from the global generator at a point that differs on resume).
        if batch_idx == 0:
            torch.manual_seed(_seed_for(self.config.seed, self.current_epoch, self.global_rank))

    def training_step(self, batch_number: torch.Tensor, batch_idx: int) -> torch.Tensor:
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
        loss = self.elbo(x) / len(x)
        if self._check_every_step:
            # before the step, so the parameters stay those of the last finite loss; under DDP every rank stops together
            finite = self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True)
            if not finite:
                self._diverged(self._at(float(loss.detach()), self.global_step, batch_idx), "the parameters were not updated with it")
        else:
            # on an accelerator, reading the loss would wait for the device: note the epoch's first non-finite loss there
            first = self._nonfinite[0] < 0
            bad = ~torch.isfinite(loss.detach()) & first
            self._nonfinite = torch.where(bad, torch.stack([self._batches_seen, loss.detach().to(self._nonfinite.dtype)]), self._nonfinite)
            self._batches_seen += 1
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        # Summed here and logged once per epoch: Lightning's per-step self.log costs about a
        # millisecond of Python, as much as 10% of a whole step of an MNIST-sized VAE on a CPU.
        self._loss_sum += loss.detach() * len(x)
        self._loss_count += len(x)
        return loss

    def _diverged(self, where: str, parameters: str) -> None:
        raise DivergenceError(
            f"training diverged: {where}; {parameters}. Lower the learning rate "
            f"(now {self.config.lr}) or check the programs for non-finite log densities"
        )

    def _at(self, loss: float, step: int, batch_idx: int) -> str:
        return f"the loss is {loss} at epoch {self.current_epoch}, step {step} (batch {batch_idx} of the epoch)"

    def on_train_epoch_end(self) -> None:
        if not self._check_every_step:  # one read an epoch, before the epoch's checkpoint (saved after this hook)
            batch, loss = self._nonfinite.tolist()
            if not self.trainer.strategy.reduce_boolean_decision(batch < 0, all=True):
                where = (self._at(loss, self._first_step_of_epoch + int(batch), int(batch)) if batch >= 0
                         else f"another rank met a non-finite loss in epoch {self.current_epoch}")
                self._diverged(where, "on an accelerator the loss is checked once an epoch, so the steps after it "
                               "updated the parameters, and this epoch is not checkpointed")
        mean = self._loss_sum / max(self._loss_count, 1)
        self.log("train_loss", mean, prog_bar=True, sync_dist=True)
        self.epoch_losses.append(float(mean))
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.elbo.parameters(), lr=self.config.lr, eps=self.config.adam_eps)
        if self.config.lr_schedule == "constant":
            return optimizer
        schedule, epochs = self.config.lr_schedule, self.config.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(schedule, epoch, epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["config"] = {"train": self.config.to_dict(), **self.run_config}
        checkpoint["model_state"] = self.model.state_dict()
        checkpoint["guide_state"] = self.guide.state_dict()


@contextlib.contextmanager
def _quiet_lightning():
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*litlogger.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
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


def _prepend_metrics(path: str, earlier: str) -> None:
    """Lightning's CSV logger starts a fresh file on resume; put the earlier epochs back in front (same line endings)."""
    later = _read_text(path) or ""
    ending = "\r\n" if "\r\n" in (later or earlier) else "\n"
    old_lines, new_lines = earlier.splitlines(), later.splitlines()
    if not new_lines:
        atomic_write_text(path, earlier)
    elif old_lines and old_lines[0] == new_lines[0]:
        atomic_write_text(path, ending.join(old_lines + new_lines[1:]) + ending)
    else:  # the columns changed: keep both blocks, each under its own header, rather than drop the earlier rows
        atomic_write_text(path, ending.join(old_lines + new_lines) + ending)


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
    progress: bool = False,
    run_config: dict[str, Any] | None = None,
    callbacks: tuple[pl.Callback, ...] | list[pl.Callback] = (),
) -> TrainResult:
    """Train ``(model, guide)`` on ``data`` by SVI with ``config``; returns a :class:`TrainResult` (losses, checkpoint path).

    ``data`` is a tensor of training points, or a data set with ``.train`` (the tensor) and
    ``.transform`` (what each training batch becomes, e.g. a fresh binarization; see
    :class:`benchmarks.datasets.Data`), which is then applied unless ``transform`` is given.
    ``model`` and ``guide`` must be ``nn.Module``s (their parameters are what is trained).

    With ``out_dir`` the last epoch is checkpointed to ``out_dir/checkpoints/last.ckpt``
    (atomically) and metrics go to ``out_dir/logs/metrics.csv``; ``resume=True``
    continues from that checkpoint. ``callbacks`` are extra Lightning callbacks (e.g.
    per-epoch evaluation).
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
    sample = train_x[: config.batch_size]
    inspect_program(model, guide, transform(sample) if transform is not None else sample)
    if transform is None:  # every datapoint is seen as it is: check them all once, not at every step
        for chunk in train_x.split(10_000):
            inspect_program(model, guide, chunk)
    run_config = dict(run_config or {})
    module = SVIModule(model, guide, train_x, config, transform, run_config)

    ckpt_dir = os.path.join(out_dir, "checkpoints") if out_dir else None
    last = os.path.join(ckpt_dir, "last.ckpt") if ckpt_dir else None
    ckpt_path = None
    if resume:
        if last is None or not os.path.exists(last):
            raise CheckpointError(f"--resume: no checkpoint to resume from at {last!r}")
        saved = load_checkpoint(last, required=CHECKPOINT_KEYS)
        check_resume_config(saved["config"], {"train": config.to_dict(), **run_config}, last)
        ckpt_path = last

    callbacks = list(callbacks)
    if ckpt_dir:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=-1, every_n_epochs=1, enable_version_counter=False))
    if progress:
        callbacks.append(pl.callbacks.TQDMProgressBar(refresh_rate=max(1, module.num_batches // 10)))
    logger = pl.loggers.CSVLogger(out_dir, name="logs", version="") if out_dir else False
    metrics_path = os.path.join(out_dir, "logs", "metrics.csv") if out_dir else None
    earlier_metrics = _read_text(metrics_path) if resume else None
    with _quiet_lightning(), pyro.validation_enabled(False):
        trainer = pl.Trainer(
            accelerator=accelerator, devices=devices, strategy=strategy, max_epochs=config.epochs,
            logger=logger, callbacks=callbacks, enable_checkpointing=bool(ckpt_dir),
            enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
            plugins=[SafeCheckpointIO()], log_every_n_steps=max(1, module.num_batches), deterministic=False,
        )
        sigint = signal.getsignal(signal.SIGINT)
        try:
            trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
        except SystemExit:
            if not trainer.interrupted:
                raise
            # Lightning answers Ctrl-C by sys.exit(1) with SIGINT ignored: give the caller back its handler and its KeyboardInterrupt
            signal.signal(signal.SIGINT, sigint if sigint is not None else signal.default_int_handler)
            raise KeyboardInterrupt from None
        except DivergenceError as err:
            kept = f"; the last finished epoch's checkpoint is kept at {last}" if last and os.path.exists(last) else ""
            raise DivergenceError(f"{err}{kept}") from None
        finally:  # also when interrupted: the earlier epochs' lines are never lost
            if earlier_metrics and trainer.is_global_zero:
                _prepend_metrics(metrics_path, earlier_metrics)
    return TrainResult(model, guide, last if ckpt_dir else None, trainer.is_global_zero, trainer.current_epoch, module.epoch_losses)
