"""The budgets of the reproduction: what each experiment trains and evaluates, at the paper's scale or a CPU's.

One :class:`Budget` per (budget, dataset): ``full`` is the paper's protocol (Cremer, Li & Duvenaud
2018; Burda et al. 2016 for the IWAE table), for a GPU; ``cpu`` a reduced protocol chosen so that each
experiment finishes in at most an hour on 2 CPU cores on MNIST (minutes on digits); ``tiny`` runs every
experiment end to end in seconds (the test suite). The reasons behind each ``cpu`` choice are in
``docs/reproduction.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

BUDGETS = ("cpu", "full", "tiny")


@dataclass(frozen=True)
class Budget:
    """Everything an experiment's size depends on. Sizes are per split (training and held-out points)."""

    name: str
    dataset: str
    # the gap experiments' VAEs (latent 50, decoder 50-200-200-D; Cremer et al.'s architecture)
    latent_dim: int = 50
    hidden: tuple[int, ...] = (200, 200)
    activation: str = "tanh"
    epochs: int = 100
    batch_size: int = 100
    lr: float = 1e-3
    lr_schedule: str = "iwae-even"
    warmup_epochs: float = 10.0
    flow_layers: int = 2  #: the flow encoder's (and every per-datapoint flow's) transforms ...
    flow_hidden: int = 100  #: ... and hidden units per transform
    # evaluation
    num_points: int = 100
    log_px_samples: int = 5000
    elbo_samples: int = 1000
    ais_chains: int = 100
    ais_steps: int = 1000
    ais_leapfrog: int = 10
    #: the decoder's AIS: steps doubled from ``ais_steps`` up to this cap until its mean on the first ``ais_check_points``
    #: points matches or beats the best IWAE's (benchmarks.reproduce.log_px)
    ais_max_steps: int = 10_000
    ais_check_points: int = 20
    bdmc_points: int = 20  #: points simulated from each decoder for its BDMC bound
    local_samples: int = 50
    local_lr: float = 1e-3
    local_window: int = 100
    local_patience: int = 10
    local_max_steps: int = 20_000
    max_elements: int = 2**26  #: elements one chunk of samples may hold (gap evaluations with keyed streams: the device's default)
    #: points of a gap decomposition evaluated (and saved, for ``--resume``) together
    eval_block: int = 100
    # experiment 2: encoder sizes, smallest first ([] is a linear encoder)
    encoder_sizes: tuple[tuple[int, ...], ...] = ((), (200,), (200, 200), (500, 500))
    # experiment 5: a snapshot every this many epochs
    snapshot_every: int = 10
    #: experiment 5's small-data model: the largest encoder trained on the first this many training points, in one fixed
    #: binarization, for ``overfit_epochs`` (the encoder overfits within a CPU budget; with the whole training set, or
    #: with a fresh binarization per batch, it does not: measured)
    overfit_points: int = 1000
    overfit_epochs: int = 1000
    # experiment 6: the 2-D latent VAE
    posterior_epochs: int = 100
    grid_points: int = 200
    grid_bound: float = 5.0
    # experiment 7: refinement steps (test time and SA-VAE training), the SA-VAE step size, its training epochs
    refine_steps: tuple[int, ...] = (1, 5, 20)
    svi_lr: float = 1.0  #: Kim et al.'s, on the batch's mean ELBO (each datapoint: 1/batch_size of its own gradient)
    svi_samples: int = 1  #: samples per refinement step (Kim et al.: one; with the closed-form KL it climbs on digits: measured)
    sa_steps: tuple[int, ...] = (20,)  #: the SA-VAE models' training steps k (Kim et al.: 20)
    sa_epochs: int = 100
    # experiment 8: the strong (autoregressive) decoder's grid
    collapse_epochs: int = 100
    betas: tuple[float, ...] = (0.5, 1.0, 2.0)
    free_bits: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0)  #: nats on the whole KL of the one latent site z
    free_bits_dim: tuple[float, ...] = (0.04, 0.1, 0.2)  #: nats per latent unit (x 50 units: the site grid's totals)
    collapse_warmup: tuple[float, ...] = (0.0, 20.0)
    # experiment 9: the IWAE table
    iwae_batch_size: int = 100
    iwae_lr_schedule: str = "iwae-even"
    iwae_test_points: int | None = None  #: None: the whole test split
    #: (model, objective, K, epochs) per row; the CPU budget gives each row the epochs 90 minutes of training allow
    iwae_rows: tuple[tuple[str, str, int, int], ...] = (("vae", "elbo", 1, 300), ("vae", "iwae", 5, 300))
    curve_every: int = 10  #: learning-curve point every this many epochs
    notes: tuple[str, ...] = field(default_factory=tuple)
    # experiments 10 and 11 (decoder sizes, q* start)
    #: experiment 10's decoders, smallest first ([] is a linear decoder), each with the budget's encoder (``hidden``);
    #: the reference code's are 0, 2 and 4 hidden layers of 200 units (experiment 11 needs no field of its own)
    decoder_sizes: tuple[tuple[int, ...], ...] = ((), (200, 200), (200, 200, 200, 200))
    # experiment 7 (SA-VAE as Kim et al. 2018)
    svi_momentum: float = 0.5  #: the refinement's momentum (v <- mu v + g; lambda <- lambda + lr v)
    svi_max_grad_norm: float = 5.0  #: the refinement's gradients, each tensor over the batch, clipped to this norm
    sa_max_grad_norm: float = 5.0  #: the SA-VAE's whole training gradient clipped to this norm before each Adam step
    sa_matched_time: bool = True  #: also train a VAE for the SA-VAE's wall time (epochs from the measured seconds, kept)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_DIGITS_CPU = Budget(
    # minutes per experiment on 2 cores. q* by the MNIST budget's rule (50-step windows, patience 5) with 20 samples a step:
    # measured, the paper's rule (100 x 10, 50 samples, cap 10,000) took 11.5 min for one model's 100 training points (FFG and
    # flow q*, AIS), mean 2,172 steps; with this rule and 100 points, experiment 1 alone took 21 min, so 50 points per split
    "cpu", "digits", epochs=300, num_points=50, ais_chains=16, ais_steps=200, ais_leapfrog=5, ais_max_steps=3200, ais_check_points=10,
    bdmc_points=10, local_samples=20, local_window=50,
    local_patience=5, local_max_steps=3000, snapshot_every=20, overfit_points=200, overfit_epochs=3000, posterior_epochs=300, sa_steps=(5,), sa_epochs=300,
    collapse_epochs=100, free_bits=(0.0, 2.0, 5.0), free_bits_dim=(0.04, 0.1), collapse_warmup=(0.0, 10.0), curve_every=10,
    iwae_rows=(("vae", "elbo", 1, 300), ("vae", "iwae", 5, 300)),
    decoder_sizes=((), (200, 200), (200, 200, 200, 200)),
)
_MNIST_CPU = Budget(
    "cpu", "mnist", epochs=60, num_points=50, log_px_samples=2000, elbo_samples=500, ais_chains=16, ais_steps=300, ais_leapfrog=5,
    ais_max_steps=2400, ais_check_points=10, bdmc_points=10,
    local_samples=20, local_window=50, local_patience=5, local_max_steps=3000, encoder_sizes=((), (200, 200), (500, 500)),
    snapshot_every=10, posterior_epochs=30, grid_points=150, refine_steps=(1, 5, 20), sa_steps=(1,), sa_epochs=60, collapse_epochs=20,
    betas=(0.5, 1.0, 2.0), free_bits=(0.0, 5.0), free_bits_dim=(0.1,), collapse_warmup=(0.0, 5.0), curve_every=20,
    # measured on 2 cores through our loop (batch 100): 6.5 s per epoch with K = 1, 15.8 s with K = 5, so 90 minutes are
    # about 800 and 330 epochs
    iwae_rows=(("vae", "elbo", 1, 800), ("vae", "iwae", 5, 330)),
    decoder_sizes=((), (200, 200), (200, 200, 200, 200)),
)
_FULL = {
    dataset: Budget(
        "full", dataset, epochs=3280, batch_size=20, lr_schedule="iwae", warmup_epochs=100.0, num_points=1000,
        ais_chains=100, ais_steps=10_000, local_max_steps=1_000_000, local_patience=10, snapshot_every=200,
        posterior_epochs=3280, sa_epochs=3280, collapse_epochs=3280, iwae_batch_size=20, iwae_lr_schedule="iwae",
        iwae_rows=(("vae", "elbo", 1, 3280), ("vae", "iwae", 5, 3280), ("vae", "iwae", 50, 3280), ("hvae", "elbo", 1, 3280),
                   ("hvae", "iwae", 50, 3280)),
        curve_every=100,
        decoder_sizes=((), (200, 200), (200, 200, 200, 200)),
    )
    for dataset in ("digits", "mnist")
}
_TINY = Budget(
    "tiny", "digits", latent_dim=2, hidden=(8,), epochs=2, batch_size=100, warmup_epochs=1.0, flow_layers=1, flow_hidden=4,
    num_points=4, eval_block=2, log_px_samples=16, elbo_samples=16, ais_chains=3, ais_steps=4, ais_leapfrog=2, ais_max_steps=8,
    ais_check_points=2, bdmc_points=2, local_samples=4,
    local_window=2, local_patience=1, local_max_steps=6, encoder_sizes=((), (16,)), snapshot_every=1, overfit_points=20,
    overfit_epochs=2, posterior_epochs=2,
    grid_points=64, grid_bound=6.0, refine_steps=(1, 2), sa_steps=(1,), sa_epochs=1, collapse_epochs=1, betas=(0.5, 1.0), free_bits=(0.0, 0.5),
    free_bits_dim=(0.25,),
    collapse_warmup=(0.0,), iwae_rows=(("vae", "elbo", 1, 1), ("vae", "iwae", 2, 1)), iwae_test_points=8, curve_every=1,
    decoder_sizes=((), (8,)),
)


def budget_for(name: str, dataset: str) -> Budget:
    """The budget ``name`` (:data:`BUDGETS`) for ``dataset``; ``tiny`` exists for digits only (the tests)."""
    if name not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; choose from {', '.join(BUDGETS)}")
    if name == "full":
        return _FULL[dataset]
    if name == "tiny":
        if dataset != "digits":
            raise ValueError("the tiny budget (the test suite's) is for --dataset digits")
        return _TINY
    return {"digits": _DIGITS_CPU, "mnist": _MNIST_CPU}[dataset]
