r"""A reparameterized ELBO whose Python runs once per input shape: the step replays a recorded graph.

The single-sample ELBO of a pair following the convention, with latent terms
weighted by :math:`\beta` (KL warm-up),

.. math:: \mathcal{L}_\beta = \sum_i \Big[\log p(x_i \mid z_i, \theta)
          + \beta \big(\log p(z_i \mid \theta) - \log q(z_i \mid x_i, \theta)\big)\Big]
          + \beta \big(\log p(\theta) - \log q(\theta)\big),
          \qquad z_i, \theta \sim q,

is the estimator :class:`pyro.infer.Trace_ELBO` computes for fully
reparameterized guides (with the entropy warm-up of Cremer et al.'s code, only the
:math:`\log q` terms carry :math:`\beta`). :class:`ReparamELBO` computes it eagerly,
without Pyro's ELBO machinery and its reads of tensor values (objective ``elbo`` uses it
where it applies: a host-device synchronization less than ``Trace_ELBO`` six times a step). :class:`CapturedELBO` computes it eagerly once per input
shape while recording every tensor operation (``torch.fx`` ``make_fx``), then
replays the recording: model, guide, Pyro's effect handlers and distribution
objects no longer run at each step, only the tensor operations, which draw
their noise from the same global generator. At capture the recording is run
beside the eager loss from the same random state and must give the identical
value, or capture is refused.

Only for *static* programs: control flow that depends on tensor values is
frozen at its first outcome. Guides must be reparameterized (score-function
terms are not part of this estimator; use ``elbo``/``Trace_ELBO`` otherwise).
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from torch import nn
from torch.func import functional_call

from ..program import ProgramInfo, global_log_prob, inspect_without_randomness, per_datapoint_log_prob, trace_pair
from ..sampling import global_share


class CaptureError(RuntimeError):
    """The program cannot be replayed from a recording."""


class ReparamELBO(nn.Module):
    """The negative single-sample ELBO above (summed over datapoints), computed eagerly."""

    def __init__(self, model: nn.Module, guide: nn.Module):
        super().__init__()
        self.model, self.guide = model, guide
        # the warm-up weights of the latent terms: log p(z) and log q(z) (both beta for KL warm-up; 1 and beta for entropy warm-up)
        self.register_buffer("model_scale", torch.ones(()), persistent=False)
        self.register_buffer("guide_scale", torch.ones(()), persistent=False)
        self.register_buffer("global_share", torch.ones(()), persistent=False)  # B/N: the batch's share of the global factor
        self.info: ProgramInfo | None = None

    def prepare(self, x: torch.Tensor) -> None:
        """Check the pair once (convention, reparameterized guide sites)."""
        if self.info is not None:
            return
        info = inspect_without_randomness(self.model, self.guide, x)
        if info.enumerated or info.auxiliary or info.global_auxiliary:
            raise CaptureError(
                "the captured ELBO scores only plain latent sites; this pair has enumerated or auxiliary sites: "
                "train with objective 'iwae' (K = 1 is the same ELBO) instead"
            )
        _, guide_trace = trace_pair(self.model, self.guide, x)
        for name in info.local_latents + info.global_latents:
            if not guide_trace.nodes[name]["fn"].has_rsample:
                raise CaptureError(
                    f"guide site {name!r} is not reparameterized; the captured ELBO has no score-function "
                    "terms: train with objective 'elbo' (Trace_ELBO) instead"
                )
        self.info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        info = self.info
        model_trace, guide_trace = trace_pair(self.model, self.guide, x)
        observed = sum(per_datapoint_log_prob(n, model_trace.nodes[n], info).sum() for n in info.observed)
        log_p = log_q = 0.0
        for name in info.local_latents:
            log_p = log_p + per_datapoint_log_prob(name, model_trace.nodes[name], info).sum()
            log_q = log_q + per_datapoint_log_prob(name, guide_trace.nodes[name], info).sum()
        for name in info.global_latents:
            m, g = model_trace.nodes[name], guide_trace.nodes[name]
            log_p = log_p + self.global_share * global_log_prob(name, m)
            log_q = log_q + self.global_share * global_log_prob(name, g)
        return -(observed + self.model_scale * log_p - self.guide_scale * log_q)

    def set_scales(self, model: float, guide: float) -> None:
        """Weight the latent terms: ``model`` on log p(z), ``guide`` on log q(z)."""
        self.model_scale.fill_(model)
        self.guide_scale.fill_(guide)


class CapturedELBO(nn.Module):
    """:class:`ReparamELBO`, replayed from one recorded graph per input shape, dtype and device."""

    def __init__(self, model: nn.Module, guide: nn.Module):
        super().__init__()
        self.loss = ReparamELBO(model, guide)
        self.dataset_size: int | None = None  #: N, set by the trainer: the global factor counts B/N per batch
        self._graphs: dict[tuple, torch.fx.GraphModule] = {}

    @property
    def model(self) -> nn.Module:
        return self.loss.model

    @property
    def guide(self) -> nn.Module:
        return self.loss.guide

    def set_latent_scale(self, beta: float) -> None:
        self.loss.set_scales(beta, beta)

    def _state(self) -> dict[str, torch.Tensor]:
        return {**dict(self.loss.named_parameters()), **dict(self.loss.named_buffers())}


    def capture(self, x: torch.Tensor) -> torch.fx.GraphModule:
        """Record the loss for inputs shaped like ``x`` and check the recording against eager."""
        from torch.fx.experimental.proxy_tensor import make_fx

        rng = torch.get_rng_state()  # before anything draws: capture must not shift the random stream
        cuda_rng = torch.cuda.get_rng_state_all() if x.is_cuda else None
        self.loss.prepare(x)
        state = self._state()
        loss = self.loss

        def eager(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(loss, state, (x,))

        with pyro.validation_enabled(False), poutine.block():
            try:
                graph = make_fx(eager)(state, x)
            except Exception as err:
                raise CaptureError(f"cannot record the loss: {type(err).__name__}: {err}") from err
            checks = []
            for run in (eager, graph):
                torch.set_rng_state(rng)
                if cuda_rng is not None:
                    torch.cuda.set_rng_state_all(cuda_rng)
                with torch.no_grad():
                    checks.append(run(state, x))
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        if not torch.equal(checks[0], checks[1]):
            raise CaptureError(f"the recorded loss ({checks[1].item()}) differs from the eager one ({checks[0].item()})")
        return graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.loss.global_share.fill_(global_share(len(x), self.dataset_size))
        key = (tuple(x.shape), x.dtype, x.device)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = self.capture(x)
        return graph(self._state(), x)
