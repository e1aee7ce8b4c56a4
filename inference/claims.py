r"""Claims checked by the numbers: paired differences with standard errors, and the verdict they support.

A claim such as "the amortization gap is larger than the approximation gap" compares two
quantities measured on the *same* datapoints, so it is a paired test: with per-datapoint
values :math:`a_i, b_i` (:math:`i = 1..n`),

.. math:: \bar d = \frac1n \sum_i (a_i - b_i), \qquad
          \mathrm{SE}(\bar d) = \frac{\mathrm{sd}_i(a_i - b_i)}{\sqrt n},

which is smaller than the unpaired :math:`\sqrt{\mathrm{SE}(\bar a)^2 + \mathrm{SE}(\bar b)^2}`
whenever :math:`a` and :math:`b` move together over the datapoints (they usually do:
a hard digit is hard for every estimator). The verdict on "a > b" is then

* **holds** when :math:`\bar d > z\,\mathrm{SE}`,
* **fails** when :math:`\bar d < -z\,\mathrm{SE}` (the opposite holds),
* **within noise** otherwise,

with :math:`z` = :data:`Z` = 3 by default, the project's rule for statistical checks. A
verdict is computed, never written by hand.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

#: Standard errors a difference must clear for a verdict other than "within noise".
Z = 3.0
VERDICTS = ("holds", "fails", "within noise")


class Difference(NamedTuple):
    """The mean of paired differences ``a - b`` over ``n`` datapoints and its standard error."""

    mean: float
    se: float
    n: int


class Verdict(NamedTuple):
    """The verdict on the claim ``a > b``, with the numbers that support it."""

    claim: str  #: the claim in words, "a > b"
    status: str  #: one of :data:`VERDICTS`
    a: float  #: mean of a
    b: float  #: mean of b
    difference: Difference  #: paired a - b
    z: float

    def text(self, digits: int = 3) -> str:
        """E.g. ``holds: amortization gap 0.495 > approximation gap 0.235 (paired difference 0.260 ± 0.037, n = 50)``."""
        d = self.difference
        return (f"{self.status}: {self.claim} — {self.a:.{digits}f} vs {self.b:.{digits}f} "
                f"(paired difference {d.mean:.{digits}f} ± {d.se:.{digits}f}, n = {d.n}, threshold {self.z:g} SE)")

    def to_dict(self) -> dict:
        return {"claim": self.claim, "status": self.status, "a": self.a, "b": self.b,
                "difference": self.difference._asdict(), "z": self.z, "text": self.text()}


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> Difference:
    """Mean and standard error of ``a - b`` over datapoints (the same points in the same order, shape ``(n,)``)."""
    a, b = torch.as_tensor(a).double().reshape(-1), torch.as_tensor(b).double().reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs values on the same datapoints, got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError(f"a paired difference needs at least 2 datapoints for its standard error, got {len(a)}")
    if not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("a paired difference needs finite values")
    d = a - b
    return Difference(float(d.mean()), float(d.std() / math.sqrt(len(d))), len(d))


def judge(claim: str, a: torch.Tensor, b: torch.Tensor, z: float = Z) -> Verdict:
    """The verdict on ``claim`` ("a > b") from per-datapoint values of ``a`` and ``b`` on the same points."""
    if not z > 0:
        raise ValueError(f"z must be positive, got {z}")
    d = paired_difference(a, b)
    if d.mean > z * d.se:
        status = "holds"
    elif d.mean < -z * d.se:
        status = "fails"
    else:
        status = "within noise"
    return Verdict(claim, status, float(torch.as_tensor(a).double().mean()), float(torch.as_tensor(b).double().mean()), d, z)
