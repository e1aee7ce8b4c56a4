r"""Claims checked by the numbers: paired differences with standard errors, and the verdict they support.

A claim such as "the amortization gap is larger than the approximation gap" compares two
quantities measured on the *same* datapoints, so it is a paired test: with per-datapoint
values :math:`a_i, b_i` (:math:`i = 1..n`),

.. math:: \bar d = \frac1n \sum_i (a_i - b_i), \qquad
          \mathrm{SE}(\bar d) = \frac{\mathrm{sd}_i(a_i - b_i)}{\sqrt n},

which is smaller than the unpaired :math:`\sqrt{\mathrm{SE}(\bar a)^2 + \mathrm{SE}(\bar b)^2}`
whenever :math:`a` and :math:`b` move together over the datapoints (they usually do:
a hard digit is hard for every estimator). The verdict on "a > b" is then

* **holds** when :math:`\bar d > t\,\mathrm{SE}`,
* **fails** when :math:`\bar d < -t\,\mathrm{SE}` (the opposite holds),
* **within noise** otherwise,

with :math:`t` the Student-t quantile on :math:`n - 1` degrees of freedom at the two-sided level
of :math:`z` = :data:`Z` = 3 normal standard errors (the project's rule), so that a verdict on a
few points is no easier to reach than on many: :math:`t` = 3.00 as :math:`n \to \infty`, 3.16 at
:math:`n` = 50, 9.2 at :math:`n` = 4 (:func:`critical_value`).

A claim that two quantities are *the same* ("the approximation gap stays") is not supported by a
"within noise" on "a > b", which is only the absence of evidence: :func:`judge_equal` tests it as an
equivalence with a stated margin :math:`m` — **holds** when :math:`|\bar d| + t\,\mathrm{SE} < m`,
**fails** when :math:`|\bar d| - t\,\mathrm{SE} > m`, **within noise** otherwise.
A verdict is computed, never written by hand.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from scipy import stats

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
    z: float  #: the nominal level, in normal standard errors
    threshold: float = math.nan  #: the standard errors the difference had to clear: the t quantile of z's level on n - 1 df
    margin: float | None = None  #: for an equivalence claim (:func:`judge_equal`): the largest |a - b| counted as equal
    basis: str = "datapoints"  #: what the standard error covers: "datapoints" (paired over points) or "monte carlo" (one point)

    def text(self, digits: int = 3) -> str:
        """E.g. ``holds: amortization gap 0.495 > approximation gap 0.235 (paired difference 0.260 ± 0.037, n = 50, ...)``."""
        d = self.difference
        if self.basis == "monte carlo":
            return (f"{self.status}: {self.claim} — {self.a:.{digits}f} vs {self.b:.{digits}f} (difference {d.mean:.{digits}f} "
                    f"± {d.se:.{digits}f}, the Monte Carlo error of this one point's two independent estimates; threshold "
                    f"{self.threshold:g} SE)")
        rule = f"threshold {self.threshold:.2f} SE (t, {d.n - 1} df, the level of {self.z:g} normal SE)"
        if self.margin is not None:
            rule += f", margin {self.margin:g}"
        return (f"{self.status}: {self.claim} — {self.a:.{digits}f} vs {self.b:.{digits}f} "
                f"(paired difference {d.mean:.{digits}f} ± {d.se:.{digits}f}, n = {d.n}, {rule})")

    def to_dict(self) -> dict:
        return {"claim": self.claim, "status": self.status, "a": self.a, "b": self.b, "difference": self.difference._asdict(),
                "z": self.z, "threshold": self.threshold, "margin": self.margin, "basis": self.basis, "text": self.text()}


def critical_value(n: int, z: float = Z) -> float:
    """Standard errors a mean of ``n`` paired differences must clear: the Student-t quantile on ``n - 1`` degrees of
    freedom at the two-sided level of ``z`` normal standard errors (``z`` itself as ``n`` grows)."""
    if n < 2:
        raise ValueError(f"a verdict needs at least 2 datapoints, got {n}")
    return _t_threshold(n - 1, z)


def _t_threshold(df: float, z: float) -> float:
    """The Student-t quantile on ``df`` degrees of freedom at the two-sided level of ``z`` normal standard errors."""
    return float(stats.t.isf(stats.norm.sf(z), df))


def _ordered(mean: float, se: float, t: float) -> str:
    """The verdict on "a > b" from a difference ``mean`` with standard error ``se`` that must clear ``t`` SE."""
    return "holds" if mean > t * se else "fails" if mean < -t * se else "within noise"


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
    t = critical_value(d.n, z)
    return Verdict(claim, _ordered(d.mean, d.se, t), float(torch.as_tensor(a).double().mean()), float(torch.as_tensor(b).double().mean()), d, z, t)


def judge_unpaired(claim: str, a: torch.Tensor, b: torch.Tensor, z: float = Z) -> Verdict:
    r"""The verdict on ``claim`` ("a > b") when ``a`` and ``b`` are measured on *different* points: the difference of
    means with the unpaired standard error :math:`\sqrt{s_a^2/n_a + s_b^2/n_b}` and Welch's degrees of freedom for the
    t threshold. (``Verdict.difference.n`` is the smaller sample.)"""
    if not z > 0:
        raise ValueError(f"z must be positive, got {z}")
    a, b = torch.as_tensor(a).double().reshape(-1), torch.as_tensor(b).double().reshape(-1)
    if min(len(a), len(b)) < 2 or not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("an unpaired difference needs at least 2 finite values on each side")
    va, vb = float(a.var()) / len(a), float(b.var()) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else min(len(a), len(b)) - 1
    t = _t_threshold(df, z)
    mean = float(a.mean() - b.mean())
    return Verdict(claim, _ordered(mean, se, t), float(a.mean()), float(b.mean()), Difference(mean, se, min(len(a), len(b))), z, t)


def judge_equal(claim: str, a: torch.Tensor, b: torch.Tensor, margin: float, z: float = Z) -> Verdict:
    """The verdict on ``claim`` ("a = b", up to ``margin``): an equivalence test on the paired difference.

    *holds* when the whole interval ``mean ± t SE`` lies within ``(-margin, margin)``, *fails* when it lies
    wholly outside, *within noise* otherwise (the points cannot tell).
    """
    if not z > 0 or not margin > 0:
        raise ValueError(f"z and margin must be positive, got z={z}, margin={margin}")
    d = paired_difference(a, b)
    t = critical_value(d.n, z)
    if abs(d.mean) + t * d.se < margin:
        status = "holds"
    elif abs(d.mean) - t * d.se > margin:
        status = "fails"
    else:
        status = "within noise"
    return Verdict(claim, status, float(torch.as_tensor(a).double().mean()), float(torch.as_tensor(b).double().mean()), d, z, t, float(margin))


def judge_monte_carlo(claim: str, a: float, a_se: float, b: float, b_se: float, z: float = Z) -> Verdict:
    """The verdict on ``claim`` ("a > b") for one datapoint, from two independent Monte Carlo estimates and their standard
    errors: the difference against :math:`z \\sqrt{se_a^2 + se_b^2}` (normal: each estimate averages many draws). What a
    claim about a few named points can check, where a test over so few points could not clear its t threshold."""
    if not z > 0:
        raise ValueError(f"z must be positive, got {z}")
    values = (float(a), float(a_se), float(b), float(b_se))
    if not all(math.isfinite(v) for v in values) or a_se < 0 or b_se < 0:
        raise ValueError(f"a Monte Carlo verdict needs finite estimates and non-negative errors, got {values}")
    mean, se = float(a) - float(b), math.sqrt(float(a_se) ** 2 + float(b_se) ** 2)
    return Verdict(claim, _ordered(mean, se, z), float(a), float(b), Difference(mean, se, 1), z, z, None, "monte carlo")
