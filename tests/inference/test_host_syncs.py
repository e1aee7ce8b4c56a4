"""Host-device synchronizations in the hot loops, counted on the CPU (inference.host_syncs): none per training step of the
sync-free objectives, none per AIS transition, none between the stopping rule's windows of local q*."""

import pytest
import torch

from inference import LocalOptions, StoppingRule, ais, local_posterior
from inference.host_syncs import HostSyncs, count_host_syncs
from inference.objectives import make_loss
from ppl_models import build_model, model_config

VAE = model_config("vae", 16, "bernoulli", latent_dim=3, hidden=[8], encoder_hidden=[8])


def data(n=6, d=16):
    return torch.bernoulli(torch.full((n, d), 0.5), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("objective,k", [("elbo", 1), ("captured-elbo", 1), ("iwae", 5), ("iwae-stl", 5), ("iwae-dreg", 5), ("beta-vae", 1)])
def test_a_training_step_of_the_sync_free_objectives_never_waits_for_the_device(objective, k):
    torch.manual_seed(0)
    model, guide = build_model(VAE)
    loss = make_loss(objective, model, guide, k)
    loss.dataset_size = 60
    x = data()
    for _ in range(2):  # the first call inspects the programs (and captures a graph): setup, not the step
        loss(x).backward()
    with HostSyncs() as syncs:
        loss(x).backward()
    assert syncs.count == 0, syncs.ops


def test_ais_transitions_never_wait_for_the_device():
    torch.manual_seed(0)
    model, guide = build_model(VAE)
    counts = []
    for steps in (4, 12):
        with HostSyncs() as syncs:
            ais(model, guide, data(), num_chains=3, num_steps=steps)
        counts.append(syncs.count)
    assert counts[0] == counts[1], counts  # the set-up's reads only, whatever the number of transitions


def test_local_q_star_reads_the_device_only_at_the_end_of_a_window():
    torch.manual_seed(0)
    model, guide = build_model(VAE)
    counts = []
    for steps in (10, 30):
        with HostSyncs() as syncs:
            local_posterior(model, guide, data(), LocalOptions(num_samples=2, rule=StoppingRule(window=5, patience=100, max_steps=steps)))
        counts.append(syncs.count)
    assert counts[1] - counts[0] <= (30 - 10) // 5, counts  # at most one per window end, none per step


def test_the_flow_encoders_autoregressive_order_stays_on_the_host_when_the_guide_moves():
    """Pyro's autoregressive inverse iterates over the order: a device tensor there costs a synchronization per latent
    dimension per layer. Moved to the meta device (a stand-in for a GPU on this CPU), the masks move and the order stays."""
    from inference.families import _flow_layout

    _, guide = build_model(model_config("vae", 16, "bernoulli", latent_dim=3, hidden=[8], encoder_hidden=[8], guide="iaf", flow_layers=2))
    guide.to("meta")
    arns = [m for m in guide.modules() if hasattr(m, "permutation")]
    assert len(arns) == 2
    assert all(a.permutation.device.type == "cpu" for a in arns)
    assert all(b.device.type == "meta" for a in arns for n, b in a.named_buffers() if n != "permutation")
    order, masks = _flow_layout(4, 6, 1, torch.device("meta"))  # the per-datapoint flows of local q*
    assert order.device.type == "cpu" and order.tolist() == [3, 2, 1, 0]
    assert all(m.device.type == "meta" for m in masks)
    assert _flow_layout(4, 6, 1, torch.device("meta"))[1] is masks  # built once, not at every step


def test_count_host_syncs_counts_each_read_of_a_tensors_value():
    t = torch.arange(3.0)
    assert count_host_syncs(lambda: (t * 2).sum()) == {"dispatch": 0}
    assert count_host_syncs(lambda: [float(v) for v in t] + [bool(t.any())]) == {"dispatch": 4}


@pytest.mark.parametrize("objective", ["elbo", "captured-elbo"])
def test_a_training_epoch_on_an_accelerator_reads_the_device_only_at_its_end(objective, monkeypatch):
    """The training loop as it runs on a GPU (the loss checked once an epoch): doubling the steps of an epoch adds no
    read of a tensor's value, apart from Adam's step counts, which torch keeps on the host."""
    from inference import training

    monkeypatch.setattr(training, "checks_every_step", lambda device: False)
    counts = []
    for n in (40, 80):
        torch.manual_seed(0)
        model, guide = build_model(VAE)
        with HostSyncs(optimizer_steps=False) as syncs:
            training.fit(model, guide, data(n), training.TrainOptions(objective=objective, epochs=2, batch_size=10))
        counts.append(syncs.count)
    assert counts[0] == counts[1], counts
