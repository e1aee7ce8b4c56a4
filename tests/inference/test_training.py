"""SVI training through Lightning: improvement, checkpoints, exact resume, bad input."""

import math
import os
import re

import pytest
import torch

from inference.estimators import elbo
from inference.io import CheckpointError, atomic_torch_save, load_checkpoint
from inference.objectives import kl_weight, make_objective
from inference.training import CHECKPOINT_KEYS, DivergenceError, TrainOptions, fit, iwae_lr_factor, load_trained, lr_factor
from ppl_models import build_model, model_config
from tests.oracles import make_ppca, sample_ppca

SMALL_VAE = dict(latent_dim=3, hidden=[16], encoder_hidden=[16])


def binary_data(n=200, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(4, d, generator=gen) > 0.5).float()
    flips = (torch.rand(n, d, generator=gen) < 0.1).float()
    return (prototypes[torch.arange(n) % 4] + flips) % 2


def params_of(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("objective", ["elbo", "meanfield"])
def test_training_improves_the_elbo(objective):
    x = binary_data()
    torch.manual_seed(0)
    model, guide = build_model(model_config("vae", 8, "bernoulli", **SMALL_VAE))
    before = elbo(model, guide, x, 50).value.mean()
    fit(model, guide, x, TrainOptions(objective=objective, epochs=15, batch_size=20, lr=1e-2))
    after = elbo(model, guide, x, 50).value.mean()
    assert after > before + 1.0


@pytest.mark.slow
def test_ppca_training_approaches_the_true_likelihood():
    truth, _ = make_ppca(seed=1)
    x = sample_ppca(truth, 300)
    torch.manual_seed(5)
    model, guide = build_model(model_config("ppca", 6, "gaussian", latent_dim=2))
    before = model.log_px(x).mean().item()
    fit(model, guide, x, TrainOptions(epochs=100, batch_size=50, lr=3e-2))
    after, best = model.log_px(x).mean().item(), truth.log_px(x).mean().item()
    assert best - after < 0.2 * (best - before)


def run(out, epochs, resume=False, **train):
    torch.manual_seed(0)
    model, guide = build_model(model_config("vae", 8, "bernoulli", **SMALL_VAE))
    config = TrainOptions(epochs=epochs, batch_size=32, kl_warmup_epochs=1.5, lr_schedule="iwae", **train)
    result = fit(model, guide, binary_data(), config, transform=None, out_dir=str(out), resume=resume, run_config={"tag": "t"})
    return model, guide, result


def test_checkpoint_round_trip_and_exact_resume(tmp_path):
    straight, straight_guide, _ = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed, resumed_guide, result = run(tmp_path / "b", 4, resume=True)
    assert torch.equal(params_of(straight), params_of(resumed))
    assert torch.equal(params_of(straight_guide), params_of(resumed_guide))

    checkpoint = load_checkpoint(result.checkpoint_path, required=CHECKPOINT_KEYS)
    assert checkpoint["config"]["tag"] == "t" and checkpoint["config"]["train"]["epochs"] == 4
    assert checkpoint["optimizer_states"] and checkpoint["epoch"] == 3
    model, guide = build_model(model_config("vae", 8, "bernoulli", **SMALL_VAE))
    model.load_state_dict(checkpoint["model_state"])
    guide.load_state_dict(checkpoint["guide_state"])
    assert torch.equal(params_of(model), params_of(resumed))
    with open(tmp_path / "b" / "logs" / "metrics.csv") as f:
        epochs = [line.split(",")[0] for line in f.read().splitlines()[1:]]
    assert epochs == ["0", "1", "2", "3"]  # the resumed log keeps the earlier epochs
    assert not [f for f in os.listdir(tmp_path / "b" / "checkpoints") if f.endswith(".tmp")]


def test_a_run_of_the_earlier_lightning_trainer_loop_resumes_bit_identically(tmp_path, request):
    """tests/data/lightning-trainer-run: `run(out, 2)` as the Trainer-based loop (before the Fabric loop) wrote it, checkpoint
    and metrics. Resumed to 4 epochs by today's loop it ends with the parameters of 4 uninterrupted epochs, its
    metrics keeping the Trainer's rows."""
    import shutil

    shutil.copytree(os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "lightning-trainer-run"), tmp_path / "old")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the committed run was made: other thread counts round the sums otherwise
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    assert "pytorch-lightning_version" in load_checkpoint(str(tmp_path / "old" / "checkpoints" / "last.ckpt"))
    straight, straight_guide, _ = run(tmp_path / "new", 4)
    resumed, resumed_guide, result = run(tmp_path / "old", 4, resume=True)
    assert torch.equal(params_of(straight), params_of(resumed)) and torch.equal(params_of(straight_guide), params_of(resumed_guide))
    assert result.epochs_run == 4
    with open(tmp_path / "old" / "logs" / "metrics.csv") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["0", "1", "2", "3"]


def test_resume_refuses_missing_or_different_runs(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        run(tmp_path / "none", 2, resume=True)
    run(tmp_path / "c", 1)
    with pytest.raises(CheckpointError, match="settings differ.*lr"):
        run(tmp_path / "c", 2, resume=True, lr=0.5)


def test_unreadable_checkpoints_give_clear_errors(tmp_path):
    _, _, result = run(tmp_path / "d", 1)
    data = open(result.checkpoint_path, "rb").read()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a torch checkpoint"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(garbage)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="lacks 'state_dict'"):
        load_checkpoint(other, required=CHECKPOINT_KEYS)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_bad_training_input_is_refused():
    model, guide = build_model(model_config("vae", 8, "bernoulli", **SMALL_VAE))
    grey = torch.rand(50, 8)
    with pytest.raises(ValueError, match="Bernoulli.*binarize"):
        fit(model, guide, grey, TrainOptions(epochs=1))
    x = binary_data()
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN.*index \(3, 2\)"):
        fit(model, guide, x, TrainOptions(epochs=1))
    with pytest.raises(ValueError, match="unknown objective 'iwae3'"):
        TrainOptions(objective="iwae3")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        TrainOptions(batch_size=0)
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        TrainOptions(lr_schedule="cosine")
    with pytest.raises(RuntimeError, match="cuda"):
        if torch.cuda.is_available():
            raise RuntimeError("cuda present: nothing to refuse")
        fit(model, guide, binary_data(), TrainOptions(epochs=1), device="cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        fit(model, guide, binary_data(), TrainOptions(epochs=1), device="tpu")


def test_iwae_learning_rate_schedule_and_kl_warmup():
    # stage i lasts 3^i epochs with factor 10^(-i/7): boundaries at 1, 4, 13, 40, ..., 3280 epochs
    assert iwae_lr_factor(0) == 1.0
    assert iwae_lr_factor(1) == iwae_lr_factor(3) == 10 ** (-1 / 7)
    assert iwae_lr_factor(4) == 10 ** (-2 / 7)
    assert iwae_lr_factor(3279) == iwae_lr_factor(10_000) == 10 ** (-7 / 7)
    assert iwae_lr_factor(1093) == 10 ** (-7 / 7) and iwae_lr_factor(1092) == 10 ** (-6 / 7)  # 1093 = sum of 3^i, i < 7
    # iwae-even: the same eight factors, each for 1/8 of the run (800 epochs: 100 each)
    assert [lr_factor("iwae-even", e, 800) for e in (0, 99, 100, 699, 700, 799)] == [1.0, 1.0, 10 ** (-1 / 7), 10 ** (-6 / 7), 10 ** (-7 / 7), 10 ** (-7 / 7)]
    assert lr_factor("constant", 5, 10) == 1.0 and lr_factor("iwae", 4, 10) == iwae_lr_factor(4)
    assert kl_weight(0, 0) == 1.0 and kl_weight(0, 10) == 0.1 and kl_weight(9, 10) == 1.0 and kl_weight(50, 10) == 1.0
    with pytest.raises(ValueError, match="unknown objective"):
        make_objective("renyi")


@pytest.mark.parametrize("epochs", [-1, False, 1.5])
def test_epochs_must_be_a_non_negative_integer(epochs):
    with pytest.raises(ValueError, match=f"epochs must be an integer >= 0, got {epochs!r}"):
        TrainOptions(epochs=epochs)
    assert TrainOptions(epochs=0).epochs == 0


def test_fit_returns_the_epoch_losses_and_the_checkpoint_that_load_trained_rebuilds(tmp_path):
    x = binary_data(60)
    torch.manual_seed(0)
    config = model_config("vae", 8, "bernoulli", **SMALL_VAE)
    model, guide = build_model(config)
    result = fit(model, guide, x, TrainOptions(epochs=3, batch_size=20), out_dir=str(tmp_path), run_config={"model": config})
    assert len(result.losses) == 3 and all(isinstance(v, float) for v in result.losses)
    with open(tmp_path / "logs" / "metrics.csv") as f:  # the same numbers Lightning logged
        logged = [float(line.split(",")[-1]) for line in f.read().splitlines()[1:]]
    assert logged == pytest.approx(result.losses, rel=1e-6)
    trained = load_trained(result.checkpoint_path)
    assert trained.config["train"]["epochs"] == 3 and trained.config["model"] == config
    for a, b in zip(trained.guide.state_dict().values(), guide.state_dict().values()):
        assert torch.equal(a, b)
    bare = load_checkpoint(result.checkpoint_path)
    del bare["config"]["model"]  # as fit writes it without a run_config
    atomic_torch_save(bare, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match="records no model config"):
        load_trained(str(tmp_path / "bare.ckpt"))


def test_fit_applies_a_data_sets_own_transform_and_refuses_plain_functions():
    """A data set with ``.train`` and ``.transform`` (dynamic binarization) is trained through its transform: the
    grey levels never reach the Bernoulli likelihood; plain functions are refused with the reason."""
    grey = torch.rand(40, 8)

    class Grey:
        train = grey

        @staticmethod
        def transform(batch):
            return torch.bernoulli(batch)

    model, guide = build_model(model_config("vae", 8, "bernoulli", **SMALL_VAE))
    fit(model, guide, Grey(), TrainOptions(epochs=1, batch_size=20))  # no error: every batch is binarized first
    with pytest.raises(ValueError, match="support"):  # the same grey levels as a bare tensor are refused by the check
        fit(model, guide, grey, TrainOptions(epochs=1, batch_size=20))

    def model_fn(x):
        pass

    with pytest.raises(TypeError, match="fit trains the parameters of nn.Module programs; the model is a function"):
        fit(model_fn, guide, binary_data(20), TrainOptions(epochs=1, batch_size=20))


class _DivergingModel(torch.nn.Module):
    """A Gaussian model whose likelihood scale turns NaN once its mean has moved past ``limit`` (a diverged decoder)."""

    def __init__(self, limit: float):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(2))
        self.limit = limit

    def forward(self, x):
        import pyro
        import pyro.distributions as dist

        scale = torch.where(self.loc.detach().abs().max() > self.limit, math.nan, 1.0)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(self.loc, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, scale, validate_args=False).to_event(1), obs=x)


class _Guide(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x):
        import pyro
        import pyro.distributions as dist

        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(self.loc.expand(len(x), 2), 1.0).to_event(1))


def test_a_diverged_run_stops_at_the_first_non_finite_loss_naming_epoch_and_step(tmp_path):
    """Adam moves the model's mean about lr per step toward the data; past 0.045 its density turns NaN, a few steps
    into the third epoch of two batches each. Training stops at that step, before updating, with finite parameters,
    and names the step and the checkpoint of the last finished epoch, which is kept."""
    x = torch.randn(40, 2) + 3.0
    model, guide = _DivergingModel(limit=0.045), _Guide()
    with pytest.raises(DivergenceError, match=r"training diverged: the loss is nan at epoch (\d+), step (\d+) \(batch (\d+) of") as err:
        fit(model, guide, x, TrainOptions(epochs=10, batch_size=20, lr=1e-2), out_dir=str(tmp_path))
    epoch, step, batch = (int(v) for v in re.search(r"epoch (\d+), step (\d+) \(batch (\d+)", str(err.value)).groups())
    assert step == 2 * epoch + batch and epoch >= 1  # two batches per epoch; at least one epoch finished first
    assert "last finished epoch's checkpoint is kept at" in str(err.value)
    assert all(torch.isfinite(p).all() for p in [*model.parameters(), *guide.parameters()])
    assert model.loc.detach().abs().max() > 0.045  # the update that crossed the limit was applied; the NaN loss's was not
    assert load_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))["epoch"] == epoch - 1


def test_on_an_accelerator_a_diverged_run_stops_at_the_epochs_end_naming_the_same_step_and_keeping_the_checkpoint(tmp_path, monkeypatch):
    """The loop as it runs on a GPU checks the loss once an epoch (reading it every step would wait for the device): the
    same run as above stops at the end of the epoch where the loss first turned NaN, names that step as the per-step
    check does, and writes no checkpoint of that epoch."""
    from inference import training

    x = torch.randn(40, 2) + 3.0
    steps = {}
    for every_step in (True, False):
        monkeypatch.setattr(training, "checks_every_step", lambda device, every_step=every_step: every_step)
        model, guide = _DivergingModel(limit=0.045), _Guide()
        out = tmp_path / str(every_step)
        with pytest.raises(DivergenceError, match=r"training diverged: the loss is nan at epoch (\d+), step (\d+) \(batch (\d+) of") as err:
            fit(model, guide, x, TrainOptions(epochs=10, batch_size=20, lr=1e-2), out_dir=str(out))
        steps[every_step] = re.search(r"epoch (\d+), step (\d+) \(batch (\d+)", str(err.value)).groups()
        epoch = int(steps[every_step][0])
        assert load_checkpoint(str(out / "checkpoints" / "last.ckpt"))["epoch"] == epoch - 1
    assert steps[False] == steps[True]
    assert "checked once an epoch" in str(err.value)


def test_infinite_learning_rates_and_warm_up_lengths_are_refused_by_name():
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got inf"):
        TrainOptions(lr=math.inf)
    with pytest.raises(ValueError, match="kl_warmup_epochs must be a finite number >= 0, got inf"):
        TrainOptions(kl_warmup_epochs=math.inf)


def test_ctrl_c_in_training_comes_back_as_keyboard_interrupt_and_a_resume_keeps_line_endings_and_epochs(tmp_path, monkeypatch):
    """Lightning answers Ctrl-C with sys.exit(1) and SIGINT ignored; fit gives the caller its KeyboardInterrupt back (so the
    command line can say what was kept), keeps the metrics of the epochs before the interruption, and restores the caller's
    SIGINT handler."""
    import signal

    from inference.training import SVIModule

    run(tmp_path, 2)
    real_step = SVIModule.training_step

    def step(self, batch_number, batch_idx):
        if self.current_epoch == 3:
            raise KeyboardInterrupt
        return real_step(self, batch_number, batch_idx)

    monkeypatch.setattr(SVIModule, "training_step", step)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a shell's background job
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, 5, resume=True)
    assert signal.getsignal(signal.SIGINT) == before  # Lightning set SIG_IGN; fit put the caller's handler back
    assert load_checkpoint(str(tmp_path / "checkpoints" / "last.ckpt"))["epoch"] == 2  # epochs 0-2 finished and kept
    monkeypatch.undo()
    run(tmp_path, 5, resume=True)
    raw = (tmp_path / "logs" / "metrics.csv").read_bytes()
    assert raw.count(b"\r\n") == 6 and raw.count(b"\n") == 6  # header + five epochs, one line ending throughout


def test_the_training_data_is_no_buffer_for_ddp_to_broadcast():
    """DDP broadcasts every buffer of the module before each forward: the training set must not be one (188 MB a step on
    MNIST over NCCL); it is an attribute each rank moves to its own device."""
    from inference.training import SVIModule

    x = binary_data()
    model, guide = build_model(model_config("vae", 8, "bernoulli", **SMALL_VAE))
    module = SVIModule(model, guide, x, TrainOptions())
    assert all(b.numel() < x.numel() for b in module.buffers())
    assert module.train_x is x


def test_a_write_that_fails_on_rank_zero_is_raised_on_every_rank_not_left_waiting():
    from types import SimpleNamespace

    from inference.training import _rank_zero_writes

    sent = []

    def disk_full():
        raise OSError(28, "No space left on device")

    zero = SimpleNamespace(is_global_zero=True, world_size=2, broadcast=lambda obj, src: sent.append(obj) or obj)
    with pytest.raises(OSError, match="No space left"):
        _rank_zero_writes(zero, disk_full)
    assert sent == ["OSError: [Errno 28] No space left on device"]  # told the others before raising
    one = SimpleNamespace(is_global_zero=False, world_size=2, broadcast=lambda obj, src: sent[0])  # what rank 0 sent
    with pytest.raises(RuntimeError, match=r"rank 0 could not write the epoch's checkpoint or metrics \(OSError: \[Errno 28\]"):
        _rank_zero_writes(one, lambda: None)
    ok = SimpleNamespace(is_global_zero=False, world_size=2, broadcast=lambda obj, src: None)
    _rank_zero_writes(ok, lambda: None)
