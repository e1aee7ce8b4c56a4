"""What every reproduction experiment shares: the data, trained models and evaluations kept in ``--out``, and the report.

A :class:`Runner` holds one ``--out`` folder, locked for the run (:class:`benchmarks.outdir.OutputFolder`):

* ``models/<name>/`` — one trained pair per name (checkpoints, CSV logs, snapshots, ``done.json``).
  A finished model whose recorded configuration equals the one asked for is reused by every
  experiment (``all`` trains each model once); an unfinished one is continued with ``--resume``
  (bit-identical to an uninterrupted run) and refused without it;
* ``evals/<key>.json`` — each evaluation (a gap decomposition, a refinement, ...) with the
  configuration it was computed under; reused when the configuration matches, recomputed otherwise;
* ``evals/partial/<key>/`` — the finished blocks of points of a gap decomposition still running or
  interrupted, continued with ``--resume`` (:meth:`Runner._in_blocks`) and removed when it finishes;
* ``<experiment>.json``, ``<experiment>.md`` and its figures — written at the end, atomically.

``--overwrite`` retrains and re-evaluates what the experiment uses and replaces its results.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pyro
import torch

from benchmarks.datasets import DATA_DIMS, Data, load_dataset
from benchmarks.outdir import load_saved_block
from inference.ais import AISOptions, HMCOptions, ais
from inference.bdmc import bdmc
from inference.claims import paired_difference
from inference.distributed import eval_blocks, first_does, from_first, gather_to_all, rank_blocks, world
from inference.families import FlowOptions
from inference.gaps import concatenate, from_state, gap_decomposition, to_state
from inference.io import atomic_torch_save, atomic_write_json, load_checkpoint
from inference.local import AdamOptions, LocalOptions, StoppingRule
from inference.sampling import generator_state, set_generator_state, set_seed
from inference.stats import mean_se
from inference.training import TrainOptions, fit, load_trained, resolve_device
from ppl_models import build_model, model_config

from . import log_px as log_px_protocol
from .budget import Budget

#: ``OUT/evals/partial/<evaluation>/``: the finished blocks of points of an evaluation that was interrupted.
PARTIAL = "partial"


def source_commit() -> str | None:
    """The project's git commit, with ``+changes`` when the working tree differs from it; None outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if changed else "")


def versions() -> dict[str, str]:
    """The software, source commit and machine a result was produced with."""
    return {"python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__, "machine": platform.machine(),
            "threads": str(torch.get_num_threads()), "commit": str(source_commit())}


def config_key(config: Any) -> str:
    """A short stable digest of a JSON-able configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Snapshots(pl.Callback):
    """Save the model's and guide's weights every ``every`` epochs (and after the last) into ``folder/epoch-XXXX.pt``."""

    def __init__(self, model, guide, folder: str, every: int):
        super().__init__()
        self.model, self.guide, self.folder, self.every = model, guide, folder, int(every)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.is_global_zero and (epoch % self.every == 0 or epoch >= trainer.max_epochs):
            atomic_torch_save({"epoch": epoch, "model_state": self.model.state_dict(), "guide_state": self.guide.state_dict()},
                              os.path.join(self.folder, f"epoch-{epoch:05d}.pt"))


class Runner:
    """The shared state of one ``python -m benchmarks.reproduce`` run (see module docstring)."""

    def __init__(self, args: argparse.Namespace, budget: Budget, out: str):
        self.args, self.budget, self.out = args, budget, out
        self.device = resolve_device(args.device)
        self.seed = args.seed
        self.progress = sys.stderr.isatty() if args.progress is None else args.progress
        self._data: dict[str, Data] = {}
        self.trained_now: list[str] = []  #: models this run trained (not reused)
        self.models_used: dict[str, Any] = {}  #: name -> the configuration (model, training, data) of every model asked for
        self.compute_seconds: dict[str, float] = {}  #: "models:<name>" / "evals:<key>" -> seconds it took to compute, reused or not
        self._fresh: set[str] = set()  #: with --overwrite, the names already redone by this run
        self._earlier_seconds: dict[str, float] = {}  #: evaluation -> seconds its blocks reused from an interrupted run took
        self.rank, self.world_size = world()  #: this process's place in a torchrun launch ((0, 1) alone)
        self.keyed = getattr(args, "streams", "global") == "keyed"  #: gap evaluations draw from streams keyed by datapoint
        self.decoders_used: dict[str, dict[str, Any]] = {}  #: "<weights>-<split>-<n>" -> the decoder's log p(x) record
        self.bound_checks: dict[str, dict[str, Any]] = {}  #: "<model>-<split>-<n>" -> its L[q*] <= log p(x) and inclusion checks

    # -- data ---------------------------------------------------------------------------------------------------
    def data(self, likelihood: str = "bernoulli") -> Data:
        if likelihood not in self._data:
            self._data[likelihood] = load_dataset(self.budget.dataset, likelihood, "dynamic" if likelihood == "bernoulli" else None,
                                                  data_root=self.args.data_root, download=self.args.download)
        return self._data[likelihood]

    def points(self, split: str, num_points: int | None = None, likelihood: str = "bernoulli") -> torch.Tensor:
        data = self.data(likelihood)
        n = min(num_points or self.budget.num_points, len(data.split(split)))
        return data.eval_points(split, n).to(self.device)

    @property
    def data_dim(self) -> int:
        return DATA_DIMS[self.budget.dataset]

    # -- models -------------------------------------------------------------------------------------------------
    def vae_config(self, **overrides: Any) -> dict[str, Any]:
        """The experiments' VAE: the budget's architecture with ``overrides`` (guide family, encoder sizes, ...)."""
        b = self.budget
        options = {"latent_dim": b.latent_dim, "hidden": list(b.hidden), "encoder_hidden": list(b.hidden), "activation": b.activation,
                   "flow_layers": b.flow_layers, "flow_hidden": [b.flow_hidden]}
        options.update(overrides)
        name = options.pop("name", "vae")
        likelihood = options.pop("likelihood", "bernoulli")
        return model_config(name, self.data_dim, likelihood, **options)

    def train_options(self, **overrides: Any) -> TrainOptions:
        b = self.budget
        base = dict(epochs=b.epochs, batch_size=b.batch_size, lr=b.lr, lr_schedule=b.lr_schedule, kl_warmup_epochs=b.warmup_epochs, seed=self.seed)
        base.update(overrides)
        return TrainOptions(**base)

    def model_dir(self, name: str, record: dict[str, Any]) -> str:
        """``OUT/models/<name>-<digest of its configuration>``: other settings never share a folder."""
        return os.path.join(self.out, "models", f"{name}-{config_key(record)}")

    def train(self, name: str, model_cfg: dict[str, Any], train: TrainOptions, *, snapshots: int | None = None,
              decoder: tuple[str, Any] | None = None, callbacks: tuple[pl.Callback, ...] = (),
               train_points: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
        """The pair ``name`` trained with ``train``: reused when finished with this configuration, continued with ``--resume``.

        ``decoder=(name, model)`` starts the model from that trained model's weights and freezes them: only the
        guide is trained (an encoder fitted to a fixed generative model). ``train_points`` trains on the first that many
        training points only, in the fixed binarization they are evaluated in (no fresh draw per batch: the small-data
        model of experiment 5, which is to overfit; the evaluation's training points are the first ones too).

        Under a torch.distributed group rank 0 trains (as one process would) while the others wait, then load it.
        """
        def trained():
            return self._train(name, model_cfg, train, snapshots=snapshots, decoder=decoder, callbacks=callbacks, train_points=train_points)

        if self.world_size == 1:
            return trained()
        pair = first_does(f"trained model {name!r}", trained)  # the others wait for as long as the training takes
        if self.rank != 0:
            self._fresh.add(name)  # rank 0 has just (re)trained it: never remove it here, even with --overwrite
            pair = self._train(name, model_cfg, train, snapshots=snapshots, decoder=decoder, callbacks=callbacks,
                               train_points=train_points, load_only=True)
        return pair

    def _train(self, name: str, model_cfg: dict[str, Any], train: TrainOptions, *, snapshots: int | None = None,
               decoder: tuple[str, Any] | None = None, callbacks: tuple[pl.Callback, ...] = (),
               train_points: int | None = None, load_only: bool = False) -> tuple[Any, Any, dict[str, Any]]:
        record = {"model": model_cfg, "train": train.to_dict(), "data": {"dataset": self.budget.dataset, "likelihood": model_cfg["likelihood"]},
                  "snapshots": snapshots, "decoder": None if decoder is None else {"from": decoder[0], "weights": self._weights_digest(decoder[1])}}
        if train_points is not None:  # (absent otherwise: the records, and folders, of whole-set models stay as they were)
            record["train_points"] = int(train_points)
            record["train_binarization"] = "fixed: the evaluation's draw"
        folder = self.model_dir(name, record)
        self.models_used[name] = json.loads(json.dumps(record, default=str))
        done_path = os.path.join(folder, "done.json")
        if self.args.overwrite and name not in self._fresh and os.path.exists(folder):
            shutil.rmtree(folder)
        self._fresh.add(name)
        if os.path.exists(done_path):
            with open(done_path) as f:
                done = json.load(f)
            if done["record"] != json.loads(json.dumps(record)):
                raise ValueError(f"model {name!r} in {folder!r} records other settings than its folder's name says; remove the folder")
            model, guide, _ = load_trained(os.path.join(folder, "checkpoints", "last.ckpt"))
            done["folder"] = folder
            self.compute_seconds[f"models:{name}"] = float(done.get("train_seconds", 0.0))
            return model.to(self.device).eval(), guide.to(self.device).eval(), done
        if load_only:  # a rank other than 0, after rank 0 finished this training: it must see the result
            raise RuntimeError(f"rank 0 trained model {name!r} into {folder!r}, but rank {self.rank} does not see its done.json there: "
                               "--out must be a folder every rank (every machine) sees")
        checkpoint = os.path.join(folder, "checkpoints", "last.ckpt")
        resume = os.path.exists(checkpoint)
        if resume and not self.args.resume:
            raise ValueError(f"model {name!r} has an unfinished training in {folder!r}: pass --resume to continue it, or --overwrite")
        data = self.data(model_cfg["likelihood"])
        if train_points is not None:  # the first points, with the one fixed binarization they are evaluated in: nothing to regularize
            data = dataclasses.replace(data, train=data.eval_points("train", train_points), binarization=None)
        set_seed(train.seed)
        model, guide = build_model(model_cfg)
        if decoder is not None:
            model.load_state_dict(decoder[1].state_dict())
            model.requires_grad_(False)  # Adam leaves parameters without gradients alone
        extra = list(callbacks)
        if snapshots:
            extra.append(Snapshots(model, guide, os.path.join(folder, "snapshots"), snapshots))
        print(f"training {name} ({train.objective}, {train.epochs} epochs){' (resumed)' if resume else ''}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        result = fit(model, guide, data, train, out_dir=folder, resume=resume, device=self.args.device, progress=self.progress,
                     run_config={"data": record["data"], "model": model_cfg}, callbacks=tuple(extra))
        done = {"record": record, "train_seconds": time.perf_counter() - t0, "losses": result.losses, "versions": versions()}
        atomic_write_json(done_path, done)
        done["folder"] = folder
        self.compute_seconds[f"models:{name}"] = done["train_seconds"]
        self.trained_now.append(name)
        return model.to(self.device).eval(), guide.to(self.device).eval(), done

    def snapshot_pairs(self, done: dict[str, Any]) -> list[tuple[int, Any, Any]]:
        """``(epoch, model, guide)`` for every snapshot of a finished model (its ``done`` record from :meth:`train`), in epoch order."""
        folder = os.path.join(done["folder"], "snapshots")
        model_cfg = done["record"]["model"]
        pairs = []
        for file in sorted(os.listdir(folder)):
            if file.endswith(".pt"):
                state = load_checkpoint(os.path.join(folder, file), required=("epoch", "model_state", "guide_state"))
                model, guide = build_model(model_cfg)
                model.load_state_dict(state["model_state"])
                guide.load_state_dict(state["guide_state"])
                pairs.append((int(state["epoch"]), model.to(self.device).eval(), guide.to(self.device).eval()))
        return pairs

    # -- evaluations --------------------------------------------------------------------------------------------
    def evaluation(self, name: str, config: dict[str, Any], compute: Callable[[], dict[str, Any]],
                   sharded: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        """``compute()`` under ``config``, kept in ``evals/<name>.json``: reused while the configuration matches.

        Under a torch.distributed group every rank runs ``sharded()`` where given (its share of the points, gathered),
        otherwise rank 0 alone runs ``compute()``; rank 0 alone reads and writes the file, and every rank returns its result.
        """
        path = os.path.join(self.out, "evals", f"{name}.json")
        config = json.loads(json.dumps(config, default=str))
        stored = None
        if self.rank == 0 and os.path.exists(path) and not (self.args.overwrite and name not in self._fresh):
            with open(path) as f:
                stored = json.load(f)
            if stored.get("config") != config:
                stored = None
        stored = from_first(stored)
        if stored is not None:
            self.compute_seconds[f"evals:{name}"] = float(stored.get("seconds", 0.0))
            return stored["result"]
        if self.rank == 0 and self.args.overwrite and name not in self._fresh:
            shutil.rmtree(self.partial_dir(name), ignore_errors=True)  # --overwrite: an interrupted attempt's blocks go too
        self._fresh.add(name)
        set_seed(self.eval_seed(config))
        t0 = time.perf_counter()
        if sharded is not None and self.world_size > 1:
            result = sharded()
        else:
            result = first_does(f"computed evaluation {name!r}", compute)  # rank 0 alone; the others wait for as long as it takes
        seconds = time.perf_counter() - t0 + self._earlier_seconds.pop(name, 0.0)
        if self.rank == 0:
            atomic_write_json(path, {"config": config, "seconds": seconds, "result": result})
            shutil.rmtree(self.partial_dir(name), ignore_errors=True)  # finished: its blocks are in the file now
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.partial_dir(name)))  # OUT/evals/partial, when no other evaluation is unfinished
            with open(path) as f:  # what every later reader sees (non-finite numbers as null)
                stored = json.load(f)
        stored = from_first(stored)
        self.compute_seconds[f"evals:{name}"] = float(stored["seconds"])
        return stored["result"]

    def eval_seed(self, config: dict[str, Any]) -> int:
        """The seed of the evaluation with ``config``: the global generator's, and the key of its per-datapoint streams."""
        return self.seed * 1000 + int(config_key(json.loads(json.dumps(config, default=str))), 16) % 997

    def local_options(self, families: tuple[str, ...] = (), **overrides: Any) -> LocalOptions:
        b = self.budget
        return LocalOptions(
            num_samples=b.local_samples, adam=AdamOptions(lr=b.local_lr), rule=StoppingRule(b.local_window, b.local_patience, b.local_max_steps),
            init="encoder", flow=FlowOptions(b.flow_layers, b.flow_hidden), families=families, **overrides,
        )

    def ais_options(self) -> AISOptions:
        b = self.budget
        return AISOptions(num_chains=b.ais_chains, num_steps=b.ais_steps, schedule="sigmoid", init="prior",
                          hmc=HMCOptions(leapfrog_steps=b.ais_leapfrog))

    def gaps(self, name: str, model, guide, split: str, *, families: tuple[str, ...] = ("ffg", "iaf"), log_px: str = "max",
             num_points: int | None = None) -> dict[str, Any]:
        """The gap decomposition of model ``name`` on the first points of ``split`` (summary with per-point values), cached,
        with its decoder's log p(x) (:meth:`decoder_log_px`).

        q* in the guide's own family defines the gaps; ``families`` are fitted beside it (``ffg`` and ``iaf``: L[q*_FFG]
        and L[q*_flow] for every model). The evaluation itself estimates log p(x) by IWAE only; log p(x) is the decoder's,
        shared by every evaluation of it on these points: the best IWAE over all of them and, once any caller asks for it
        (``log_px="max"``), AIS calibrated against that IWAE, with BDMC's error bound.
        """
        if log_px not in ("max", "iwae"):
            raise ValueError(f"log_px is 'max' (the decoder's AIS too) or 'iwae', got {log_px!r}")
        x = self.points(split, num_points)
        b = self.budget
        config = {"what": "gaps", "model": name, "split": split, "n": len(x), "families": list(families), "log_px": "iwae",
                  "protocol": log_px_protocol.PROTOCOL,
                  "log_px_samples": b.log_px_samples, "elbo_samples": b.elbo_samples, "local": self.local_options(families).__repr__(),
                  "weights": self._weights_digest(model, guide),
                  # q* in a flow guide's own family starts at the amortized flow (GaussianEncoder.local_start) since issue 15
                  "flow_start": "amortized" if callable(getattr(guide, "local_start", None)) and getattr(guide, "local_family", None) == "iaf" else None}

        if self.keyed:
            config["streams"] = "keyed"  # draws keyed by (seed, point): the same numbers in one process or sharded

        # the budget's fixed chunks, keyed or not: keyed draws do not depend on the chunking, but the float rounding of
        # log p(x)'s logsumexp over chunks does (1e-15), and a GPU's default budget follows its free memory
        def decompose(lo: int, hi: int):
            keyed = {"seed": self.eval_seed(config), "index": torch.arange(lo, hi, device=x.device)} if self.keyed else {}
            return gap_decomposition(model, guide, x[lo:hi], log_px_samples=b.log_px_samples, elbo_samples=b.elbo_samples,
                                     local=self.local_options(families), log_px="iwae",
                                     max_elements=b.max_elements, progress=self.progress, **keyed)

        if not self.keyed and len(eval_blocks(len(x), b.eval_block)) > 1:
            config["eval_block"] = b.eval_block  # one generator runs on from block to block: the blocks shape the numbers
        key = f"gaps-{name}-{split}-{config_key(config)}"

        def blocked() -> dict[str, Any]:
            return self._in_blocks(key, config, len(x), decompose)

        summary = self.evaluation(key, config, blocked, blocked)
        return self.decoder_log_px(name, model, guide, split, x, key, summary, ais=log_px == "max")

    # -- one log p(x) per decoder ------------------------------------------------------------------------------------
    def _decoder_store_path(self, digest: str, split: str, n: int) -> str:
        return os.path.join(self.out, "evals", "decoders", f"{digest}-{split}-{n}.json")

    def decoder_log_px(self, name: str, model, guide, split: str, x: torch.Tensor, key: str, summary: dict[str, Any], *,
                       ais: bool) -> dict[str, Any]:
        """``summary`` (the gap evaluation ``key`` of model ``name``) recomputed with its decoder's log p(x)
        (:mod:`benchmarks.reproduce.log_px`): the evaluation joins the decoder's candidates, kept in
        ``OUT/evals/decoders/<weights>-<split>-<n>.json``; the best IWAE over them, and AIS (calibrated on a check subset)
        once any caller asked for it (``ais``), the higher mean winning; BDMC's bound beside AIS."""
        digest, n = self._weights_digest(model), len(x)
        path = self._decoder_store_path(digest, split, n)
        store = None
        if self.rank == 0:
            store = {"decoder": digest, "split": split, "n": n, "models": [], "ais_requested": False, "candidates": {}}
            if os.path.exists(path):
                with open(path) as f:
                    store = json.load(f)
            store["candidates"][key] = log_px_protocol.candidate(summary, key)
            store["models"] = sorted({*store["models"], name})
            store["ais_requested"] = bool(store["ais_requested"] or ais)
            atomic_write_json(path, store)
        store = from_first(store)
        iwae = log_px_protocol.best_iwae(store["candidates"])
        calibration, bdmc_record, ais_estimate = None, None, None
        if store["ais_requested"]:
            calibration = self._calibrated_ais(digest, model, guide, split, x, iwae)
            ais_estimate = calibration.pop("estimate")
            bdmc_record = self._decoder_bdmc(digest, model, guide, x, calibration["steps"])
        shared = log_px_protocol.choose(iwae, ais_estimate)
        sources = iwae["source"]
        shared["decoder"] = {"weights": digest, "split": split, "n": n, "models": store["models"], "candidates": iwae["candidates"],
                             "iwae_chosen_from": {k: sources.count(k) for k in sorted(set(sources))}, "ais": calibration, "bdmc": bdmc_record}
        result = log_px_protocol.with_log_px(summary, shared)
        self.decoders_used[f"{digest}-{split}-{n}"] = {"model": name, "split": split, "n": n, "method": shared["method"],
                                                     "margin": shared["margin"], "decoder": shared["decoder"],
                                                     "log_px": result["quantities"]["log_px"]}
        self.bound_checks[f"{name}-{split}-{n}"] = {"model": name, "split": split, "checks": result["bound_checks"],
                                                    "inclusion": result.get("inclusion")}
        return result

    def _ais_options(self, steps: int) -> AISOptions:
        return dataclasses.replace(self.ais_options(), num_steps=int(steps))

    def _ais_run(self, what: str, digest: str, model, guide, x: torch.Tensor, steps: int, split: str) -> dict[str, Any]:
        """AIS (the budget's chains and HMC, ``steps`` sigmoid steps from the prior) on ``x``, cached."""
        options = self._ais_options(steps)
        config = {"what": what, "decoder": digest, "split": split, "n": len(x), "ais": repr(options)}
        if self.keyed:
            config["streams"] = "keyed"

        def compute() -> dict[str, Any]:
            keyed = {"seed": self.eval_seed(config)} if self.keyed else {}
            result = ais(model, guide, x, num_chains=options.num_chains, num_steps=options.num_steps, schedule=options.schedule,
                         hmc=options.hmc, init=options.init, max_elements=self.budget.max_elements, progress=self.progress, **keyed)
            return {"per_point": result.log_px.value.tolist(), "per_point_se": result.log_px.stderr.tolist(),
                    "acceptance": float(result.acceptance.mean())}

        return self.evaluation(f"{what}-{digest}-{split}-{len(x)}-{steps}", config, compute)

    def _calibrated_ais(self, digest: str, model, guide, split: str, x: torch.Tensor, iwae: dict[str, Any]) -> dict[str, Any]:
        """AIS on all of ``x`` at the fewest steps of the ladder whose mean on the check subset matches or beats ``iwae``'s."""
        b = self.budget
        check = min(b.ais_check_points, len(x))
        target = iwae["per_point"][:check]
        tried = []
        for steps in log_px_protocol.calibration_ladder(b.ais_steps, b.ais_max_steps):
            run = self._ais_run("ais-check", digest, model, guide, x[:check], steps, split)
            d = paired_difference(torch.tensor(run["per_point"], dtype=torch.float64), torch.tensor(target, dtype=torch.float64))
            tried.append({"steps": steps, "ais_minus_iwae": {"mean": d.mean, "se": d.se}})
            matched = log_px_protocol.matches(run["per_point"], target)
            if matched:
                break
        full = self._ais_run("ais", digest, model, guide, x, steps, split)
        return {"steps": steps, "chains": b.ais_chains, "leapfrog": b.ais_leapfrog, "check_points": check, "tried": tried,
                "matched": matched, "cap": b.ais_max_steps, "acceptance": full["acceptance"], "estimate": full}

    def _decoder_bdmc(self, digest: str, model, guide, x: torch.Tensor, steps: int) -> dict[str, Any]:
        """BDMC on ``bdmc_points`` points simulated from the decoder, with the calibrated AIS settings: the mean gap between
        the reverse (upper) and forward (lower) bounds, an estimate of forward AIS's error on data like the model's."""
        options = self._ais_options(steps)
        template = x[: min(self.budget.bdmc_points, len(x))]
        config = {"what": "bdmc", "decoder": digest, "n": len(template), "ais": repr(options)}

        def compute() -> dict[str, Any]:
            result = bdmc(model, guide, template, options, max_elements=self.budget.max_elements, progress=self.progress)
            gap = result.gap.double()
            mean, se = mean_se(gap)
            return {"points": len(template), "steps": steps, "lower": result.lower.value.tolist(), "upper": result.upper.value.tolist(),
                    "gap": {"mean": mean, "se": se}}

        return self.evaluation(f"bdmc-{digest}-{len(template)}-{steps}", config, compute)

    def partial_dir(self, name: str) -> str:
        """``OUT/evals/partial/<name>/``: the finished blocks of points of an evaluation that has not finished."""
        return os.path.join(self.out, "evals", PARTIAL, name)

    def _in_blocks(self, name: str, config: dict[str, Any], n: int, decompose: Callable[[int, int], Any]) -> dict[str, Any]:
        """The summary of ``decompose`` over ``n`` points evaluated in blocks of the budget's ``eval_block`` points, each
        finished block saved at once (atomically) in :meth:`partial_dir`, so that ``--resume`` continues an interrupted
        evaluation with the blocks not yet done and gives the numbers of an uninterrupted one.

        With keyed streams a block's numbers depend on its points alone: under a torch.distributed group rank r evaluates
        blocks r, r + W, ... and every saved block is reused. With the global generator the blocks run in order, each
        saved with the generator's state after it; a resumed run reuses the finished blocks in front and restores the
        generator's state from the last of them. A block saved under another configuration is never reused.
        """
        blocks = eval_blocks(n, self.budget.eval_block, self.world_size)
        folder = self.partial_dir(name)
        fingerprint = config_key(config)
        found = from_first(sorted(f for f in os.listdir(folder) if f.endswith(".pt")) if self.rank == 0 and os.path.isdir(folder) else [])
        if found and not self.args.resume:
            raise ValueError(f"evaluation {name!r} was interrupted with {len(found)} of {len(blocks)} block(s) of points finished, kept in "
                             f"{folder!r}: pass --resume to continue it, or --overwrite")
        states: dict[int, dict[str, Any]] = {}
        generator = None  # the global generator's state after the last reused block
        reused, reused_seconds, recomputed = 0, 0.0, False
        for k in rank_blocks(blocks, self.rank, self.world_size):
            lo, hi = blocks[k]
            path = os.path.join(folder, f"{lo:06d}-{hi:06d}.pt")
            in_front = self.keyed or not recomputed  # global generator: only an unbroken run of blocks from the first
            saved = (load_saved_block(path, fingerprint, required=("fingerprint", "state", "generator"))
                     if self.args.resume and in_front and os.path.basename(path) in found else None)
            if saved is not None:
                states[k], generator = saved["state"], saved["generator"]
                reused, reused_seconds = reused + 1, reused_seconds + float(saved.get("seconds", 0.0))
                continue
            if generator is not None and not self.keyed:
                set_generator_state(generator, self.device)
                generator = None
            t0 = time.perf_counter()
            states[k], recomputed = to_state(decompose(lo, hi)), True
            os.makedirs(folder, exist_ok=True)
            atomic_torch_save({"fingerprint": fingerprint, "state": states[k], "generator": generator_state(self.device),
                               "seconds": time.perf_counter() - t0}, path)
        if reused:
            print(f"resumed evaluation {name}: {reused} finished block(s) of points reused", file=sys.stderr, flush=True)
        everything = gather_to_all((states, reused_seconds))
        self._earlier_seconds[name] = sum(seconds for _, seconds in everything)  # what the reused blocks took when computed
        merged = {k: v for part, _ in everything for k, v in part.items()}
        return concatenate([from_state(merged[k])[0] for k in range(len(blocks))]).summary()

    @staticmethod
    def _weights_digest(*modules) -> str:
        """A digest of the modules' weights, so an evaluation is never reused for other weights of the same name."""
        digest = hashlib.sha256()
        for module in modules:
            for key, value in sorted(module.state_dict().items()):
                digest.update(key.encode())
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]
