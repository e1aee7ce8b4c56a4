"""Every estimator's outputs on the input's device, and no host tensor mixed into device work: checked on the CPU with a
simulated second device (inference.fake_device), the class of bug that failed 8 of the first GPU run's 10 checks."""

import pytest
import torch

from inference import LocalOptions, StoppingRule, ais, local_posterior
from inference.ais import AISOptions
from inference.bdmc import bdmc
from inference.estimators import elbo, iwae_log_px
from inference.fake_device import FakeDevice, off_device
from inference.gaps import gap_decomposition
from ppl_models import build_model, model_config

VAE = model_config("vae", 16, "bernoulli", latent_dim=3, hidden=[8], encoder_hidden=[8])


@pytest.fixture(autouse=True)
def fresh_flow_layouts():
    """The flows' masks are cached per device; a cache filled under another simulated device (or the real meta device)
    holds tensors this one does not know."""
    from inference.families import _flow_layout

    _flow_layout.cache_clear()
    yield
    _flow_layout.cache_clear()


def data(n=6, d=16):
    return torch.bernoulli(torch.full((n, d), 0.5), generator=torch.Generator().manual_seed(0))


def placed(fake, *modules_and_tensors):
    for m in modules_and_tensors:
        fake.to_device(*([m] if isinstance(m, torch.Tensor) else [*m.parameters(), *m.buffers()]))


def test_the_simulated_device_follows_cudas_rules():
    x = torch.randn(4, 3)
    with FakeDevice() as fake:
        fake.to_device(x)
        assert x.device == torch.device("meta")  # what code passes on to device= and .to()
        ok = [x * 2, torch.zeros(4, 3, device=x.device) + x, torch.ones(3).to(x.device) * x, x + torch.tensor(1.0), x[torch.tensor([0, 2])]]
        assert fake.violations == [] and all(fake.on_device(t) for t in ok)
        host = x.cpu()
        assert not fake.on_device(host) and not fake.on_device(torch.zeros(3))
        assert host.device == torch.device("cpu")
        torch.zeros(4, 3) + x  # a host tensor in device work
        y = x.clone()
        y[torch.tensor([1])] = torch.ones(1, 3)  # host values written into a device tensor
    assert [(v.op, v.host_shape) for v in fake.violations] == [("add", (4, 3)), ("__setitem__", (1, 3))]


def _decomposition(model, guide, x, keyed):
    return gap_decomposition(model, guide, x, log_px_samples=40, elbo_samples=4, log_px="max",
                             local=LocalOptions(num_samples=2, rule=StoppingRule(2, 1, 6), families=("ffg", "iaf")),
                             ais_options=AISOptions(num_chains=2, num_steps=3),
                             **({"seed": 3, "index": torch.arange(len(x))} if keyed else {}))


CALLS = {
    "elbo": lambda m, g, x: elbo(m, g, x, 4),
    "elbo keyed": lambda m, g, x: elbo(m, g, x, 4, seed=1, index=torch.arange(len(x))),
    "iwae_log_px (PSIS k-hat)": lambda m, g, x: iwae_log_px(m, g, x, 40),
    "ais": lambda m, g, x: ais(m, g, x, num_chains=2, num_steps=3),
    "bdmc": lambda m, g, x: bdmc(m, g, x, AISOptions(num_chains=2, num_steps=3)),
    "local q* (FFG and flow)": lambda m, g, x: local_posterior(m, g, x, LocalOptions(num_samples=2, rule=StoppingRule(2, 1, 6), families=("ffg", "iaf"))),
    "gap_decomposition": lambda m, g, x: _decomposition(m, g, x, keyed=False),
    "gap_decomposition keyed": lambda m, g, x: _decomposition(m, g, x, keyed=True),
}


@pytest.mark.parametrize("name", CALLS)
def test_every_estimator_returns_its_tensors_on_the_inputs_device_and_mixes_in_no_host_tensor(name):
    torch.manual_seed(0)
    model, guide = build_model(VAE)
    x = data()
    with FakeDevice() as fake:
        placed(fake, model, guide, x)
        result = CALLS[name](model, guide, x)
    assert [(v.op, v.host_shape) for v in fake.violations] == [], fake.violations[0].stack if fake.violations else ""
    assert off_device(fake, result) == []


def test_the_check_catches_the_bug_of_the_first_gpu_run(monkeypatch):
    """The per-datapoint scores once put their accumulator on the device of the trace's first site: the data plate's
    indices, always on the host. Brought back, the simulated device sees it."""
    import inference.program as program

    monkeypatch.setattr(program, "_device_of", lambda trace, names: torch.device("cpu"))
    torch.manual_seed(0)
    model, guide = build_model(VAE)
    x = data()
    with FakeDevice() as fake:
        placed(fake, model, guide, x)
        iwae_log_px(model, guide, x, 8)
    assert fake.violations and fake.violations[0].op == "add"


MODELS = {
    "vae, IAF encoder": model_config("vae", 16, "bernoulli", latent_dim=3, hidden=[8], encoder_hidden=[8], guide="iaf", flow_layers=2),
    "hierarchical vae": model_config("hvae", 16, "bernoulli", latent_dims=[4, 2], hidden=[8], upper_hidden=[6]),
    "sigmoid belief net": model_config("sbn", 16, "bernoulli", layers=[4, 3]),
    "gaussian mixture (global parameters, enumerated)": model_config("gmm", 16, "gaussian", components=3),
}


@pytest.mark.parametrize("name", MODELS)
def test_the_zoos_other_models_stay_on_the_device_too(name):
    torch.manual_seed(0)
    model, guide = build_model(MODELS[name])
    x = data() if "mixture" not in name else torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    families = ("ffg",) if "sigmoid" not in name and "mixture" not in name else ()
    with FakeDevice() as fake:
        placed(fake, model, guide, x)
        results = [elbo(model, guide, x, 4), iwae_log_px(model, guide, x, 40),
                   gap_decomposition(model, guide, x, log_px_samples=40, elbo_samples=4, log_px="iwae",
                                     local=LocalOptions(num_samples=2, rule=StoppingRule(2, 1, 6), families=families),
                                     seed=3, index=torch.arange(len(x)))]
    assert [(v.op, v.host_shape) for v in fake.violations] == [], fake.violations[0].stack if fake.violations else ""
    assert off_device(fake, results) == []



def _objectives():
    from inference.objectives import OBJECTIVES

    # captured-elbo replays a graph recorded at the aten level, where the simulation is invisible: the recording holds
    # the real device it was captured on (on a GPU, the GPU: graphs are kept per device)
    return [name for name, o in OBJECTIVES.items() if o.needs != "enumerated" and name != "captured-elbo"]


@pytest.mark.parametrize("objective", _objectives())
def test_a_training_step_of_every_objective_stays_on_the_device(objective):
    from inference.objectives import OBJECTIVES, make_loss

    torch.manual_seed(0)
    model, guide = build_model(VAE)
    x = data()
    k = max(2, OBJECTIVES[objective].min_particles) if OBJECTIVES[objective].max_particles != 1 else 1
    params = {"svi_steps": 2, "svi_lr": 0.1} if objective == "sa-vae" else {}
    with FakeDevice() as fake:
        placed(fake, model, guide, x)
        loss = make_loss(objective, model, guide, k, **params)
        loss.dataset_size = 60
        placed(fake, loss)  # its own parameters and buffers (baselines, scales), moved with the module
        optimizer = torch.optim.Adam(loss.parameters(), lr=1e-3)
        for _ in range(2):
            value = loss(x) / len(x)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
    assert [(v.op, v.host_shape) for v in fake.violations] == [], fake.violations[0].stack if fake.violations else ""
    assert fake.on_device(value) and all(fake.on_device(p) for p in loss.parameters())
