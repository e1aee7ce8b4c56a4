"""The memory budget: the device's default, and a chunk that runs out of device memory halved and tried again."""

import logging
import sys

import pytest
import torch

import inference.ais  # noqa: F401  (the module, reached through sys.modules: the package exports a function of that name)
import inference.estimators
from inference import ais, iwae_log_px
from inference.memory import MAX_ELEMENTS, default_max_elements, resolve_max_elements
from ppl_models import build_model, model_config

VAE = model_config("vae", 16, "bernoulli", latent_dim=3, hidden=[8], encoder_hidden=[8])


def data(n=6):
    return torch.bernoulli(torch.full((n, 16), 0.5), generator=torch.Generator().manual_seed(0))


def test_the_default_budget_is_the_cpus_constant_and_a_share_of_a_gpus_free_memory(monkeypatch):
    assert default_max_elements("cpu") == default_max_elements(None) == MAX_ELEMENTS
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 16 * 2**30))  # 8 GiB free of 16
    assert default_max_elements("cuda:0") == 2**30  # half of 8 GiB in float32 elements
    assert resolve_max_elements(None, torch.device("cuda:0")) == 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (7 * 2**30, 16 * 2**30))  # 7 GiB: 3.5 GiB, rounded down
    assert default_max_elements("cuda:0") == 2**29
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (7 * 2**30 + 12345, 16 * 2**30))  # a little more: the same chunks
    assert default_max_elements("cuda:0") == 2**29
    assert resolve_max_elements(1000, "cuda:0") == 1000
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 16 * 2**30))  # almost nothing free: a floor
    assert default_max_elements("cuda") == MAX_ELEMENTS // 16
    with pytest.raises(ValueError, match="max_elements"):
        resolve_max_elements(0, "cpu")


def test_a_chunk_out_of_device_memory_is_halved_and_the_estimate_completed(monkeypatch, caplog):
    torch.manual_seed(0)
    model, guide = build_model(VAE)
    x = data()
    real = inference.estimators.log_weights
    sizes = []

    def tight(model, guide, x, size, info):
        sizes.append(size)
        if size > 25:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, guide, x, size, info)

    monkeypatch.setattr(inference.estimators, "log_weights", tight)
    with caplog.at_level(logging.WARNING, logger="inference.memory"):
        est = iwae_log_px(model, guide, x, 100, chunk_size=100)
    assert est.num_samples == 100 and torch.isfinite(est.value).all()
    assert sizes == [100, 50, 25, 25, 25, 25]  # halved twice, then every later chunk at the size that fits
    assert "out of device memory with chunks of 100; retrying with 50" in caplog.text
    monkeypatch.undo()
    torch.manual_seed(1)
    reference = iwae_log_px(model, guide, x, 2000)
    assert ((est.value - reference.value).abs() < 3 * (est.stderr**2 + reference.stderr**2).sqrt()).all()


def test_an_ais_block_out_of_device_memory_is_run_again_with_half_the_datapoints(monkeypatch, caplog):
    torch.manual_seed(0)
    model, guide = build_model(VAE)
    x = data()
    module = sys.modules["inference.ais"]
    real = module.forward_run
    blocks = []

    def tight(model, guide, xb, *args, **kwargs):
        blocks.append(len(xb))
        if len(xb) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, guide, xb, *args, **kwargs)

    monkeypatch.setattr(module, "forward_run", tight)
    with caplog.at_level(logging.WARNING, logger="inference.memory"):
        result = ais(model, guide, x, num_chains=3, num_steps=4)
    assert result.log_px.value.shape == (6,) and torch.isfinite(result.log_px.value).all()
    assert blocks == [6, 3, 1, 1, 1, 1, 1, 1]  # 6 fails, 3 fails, then every block at the size that fits
    assert "ais: out of device memory with chunks of 6; retrying with 3" in caplog.text


def test_a_single_sample_that_does_not_fit_is_a_clear_error(monkeypatch):
    model, guide = build_model(VAE)

    def never(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(inference.estimators, "log_weights", never)
    with pytest.raises(MemoryError, match="out of device memory with chunks of a single element"):
        iwae_log_px(model, guide, data(), 4, chunk_size=4)
