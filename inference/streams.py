r"""Random numbers keyed by (seed, datapoint index): a datapoint's draws do not depend on its batch.

By default the estimators draw from torch's global generator, so a datapoint's result depends on
which other points share its call, its chunk of samples, its block and its process. With a
:class:`PointStream` every random number a per-datapoint estimator draws is instead a *function* of

    (seed, purpose, step, site, op, datapoint index, sample index, position in the rest of the tensor),

a counter-based generator in the manner of Salmon et al. (2011, "Parallel random numbers: as easy
as 1, 2, 3"): nothing is carried from one draw to the next, so the same point evaluated alone, in
two halves, in reverse order, with other chunk sizes or on another rank draws the same numbers.
The numbers are the same on every device too (integer arithmetic only).

* :func:`mix32` — a 32-bit integer bijection of low bias (Wellons' ``lowbias32``, two
  xor-shift-multiply rounds), on int64 tensors, with every product split into 16-bit limbs so
  that nothing overflows;
* :func:`element_keys` — the key of every element of a tensor whose data axis holds global
  datapoint indices and whose sample axis holds sample indices from ``offset``: a chain of
  :func:`mix32` over seed, index, sample and the row-major position in the remaining axes. For a
  fixed prefix each link is a bijection, so two samples of one datapoint never share a key;
* :func:`uniform` — 32-bit uniforms on (0, 1), one per key;
  :func:`normal` — ``ndtri`` of them;
* :class:`KeyedSampling` — a Pyro messenger that draws the value of every unobserved sample site
  from keyed numbers, by running the site's own sampler under :class:`_KeyedRandomOps`, a
  dispatch mode that answers torch's random operators (normal, uniform, bernoulli, exponential,
  rand, randn) with keyed numbers of the same law, so reparameterized sites keep their gradients
  and any distribution built on those operators (flows included) works; categorical sites are drawn
  by inversion of a keyed uniform. A distribution drawn
  by another random operator (gamma, multinomial, …) is refused by name;
* :func:`keyed` — the context the estimators open around each draw.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch.utils._python_dispatch import TorchDispatchMode

from .program import DATA_PLATE, SAMPLE_PLATE

MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B
aten = torch.ops.aten


# ---- the integer mixing ---------------------------------------------------------------------------------------------


def _mul32_(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` in place, for int64 ``x`` in [0, 2**32): ``c`` split in 16-bit halves, so no product
    reaches 2**48 and nothing relies on how a device wraps an overflowing integer."""
    high = (x * (c >> 16)).bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    return x.mul_(c & 0xFFFF).add_(high).bitwise_and_(MASK32)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """Wellons' ``lowbias32`` on int64 tensors holding 32-bit values: a bijection of [0, 2**32) (a new tensor)."""
    x = x ^ (x >> 16)
    _mul32_(x, _M1)
    x.bitwise_xor_(x >> 15)
    _mul32_(x, _M2)
    return x.bitwise_xor_(x >> 16)


def mix32_int(x: int) -> int:
    """:func:`mix32` of one Python integer (the same numbers)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * _M1) & MASK32
    x ^= x >> 15
    x = (x * _M2) & MASK32
    return x ^ (x >> 16)


def prefix_key(seed: int, *labels: int | str) -> int:
    """The 32-bit key of a seed followed by labels (strings by CRC-32, integers as themselves)."""
    h = mix32_int(int(seed) & MASK32) ^ mix32_int(int(seed) >> 32)
    for label in labels:
        value = zlib.crc32(label.encode()) if isinstance(label, str) else int(label)
        h = mix32_int(h ^ (value & MASK32))
    return h


# ---- keys and draws -------------------------------------------------------------------------------------------------


def element_keys(
    prefix: int, shape: Sequence[int], device: torch.device | str, *, data_axis: int | None = None,
    index: torch.Tensor | None = None, sample_axis: int | None = None, offset: int = 0,
) -> torch.Tensor:
    """int64 keys of shape ``shape``: ``prefix``, then the global datapoint index along ``data_axis``
    (``index``, one per position), then the sample index ``offset + s`` along ``sample_axis``, then the
    row-major position in the other axes. Leave an axis out (None) to share its numbers along it."""
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    h = torch.full((1,) * ndim, prefix, dtype=torch.int64, device=device)

    def along(axis: int, values: torch.Tensor) -> torch.Tensor:
        view = [1] * ndim
        view[axis] = len(values)
        return values.reshape(view)

    if data_axis is not None:
        if index is None or len(index) != shape[data_axis]:
            raise ValueError(f"a keyed draw of shape {shape} has {shape[data_axis]} datapoints along axis {data_axis}, "
                             f"but the stream holds {None if index is None else len(index)} indices")
        h = mix32(h ^ along(data_axis, index.to(device=device, dtype=torch.int64) & MASK32))
    if sample_axis is not None:
        samples = torch.arange(offset, offset + shape[sample_axis], device=device, dtype=torch.int64)
        h = mix32(h ^ along(sample_axis, samples & MASK32))
    keyed = {a for a in (data_axis, sample_axis) if a is not None}
    rest = [s if a not in keyed else 1 for a, s in enumerate(shape)]
    position = torch.arange(max(1, math.prod(rest)), device=device, dtype=torch.int64).reshape(rest)
    return mix32(h ^ position).expand(shape)


def uniform(keys: torch.Tensor) -> torch.Tensor:
    """float64 uniforms on the open interval (0, 1): ``(key + 1/2) / 2**32`` (keys are already mixed).

    32 bits each: the smallest is 2**-33, so :func:`normal` reaches 6.3 standard deviations."""
    return (keys.double() + 0.5) * 2.0**-32


def normal(keys: torch.Tensor) -> torch.Tensor:
    """float64 standard normals, ``ndtri`` of :func:`uniform`."""
    return torch.special.ndtri(uniform(keys))


class PointStream(NamedTuple):
    """Whose random numbers: a seed, the global index of each datapoint (N,), the first sample's index."""

    seed: int
    index: torch.Tensor  #: (N,) int64, on the data's device
    offset: int = 0

    def rows(self, rows: torch.Tensor | slice) -> PointStream:
        """The stream of a subset of the datapoints (their global indices kept)."""
        return self._replace(index=self.index[rows])

    def shifted(self, offset: int) -> PointStream:
        """The stream of the samples from ``offset`` on (a later chunk of one draw)."""
        return self._replace(offset=int(offset))


def point_stream(seed: int | None, x: torch.Tensor, index: torch.Tensor | Sequence[int] | None = None) -> PointStream | None:
    """The stream of ``x``'s rows: ``index`` their global indices (default ``0..N-1``); None without a seed."""
    if seed is None:
        if index is not None:
            raise ValueError("index names the datapoints of a keyed stream: pass a seed with it")
        return None
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if index is None:
        index = torch.arange(len(x), device=x.device)
    index = torch.as_tensor(index, device=x.device)
    if index.dtype.is_floating_point or index.dim() != 1 or len(index) != len(x):
        raise ValueError(f"index must hold one integer per datapoint ({len(x)}), got shape {tuple(index.shape)} of {index.dtype}")
    if len(index) and (int(index.min()) < 0 or len(torch.unique(index)) != len(index)):
        raise ValueError("index must hold distinct non-negative datapoint indices")
    return PointStream(int(seed), index.long())


def _stream_keys(stream: PointStream, purpose: str, step: int, like: torch.Tensor, data_axis: int, sample_axis: int | None) -> torch.Tensor:
    return element_keys(prefix_key(stream.seed, purpose, step), like.shape, like.device, data_axis=data_axis,
                        index=stream.index, sample_axis=sample_axis, offset=stream.offset)


def draw_normal(stream: PointStream, purpose: str, step: int, like: torch.Tensor, *, data_axis: int, sample_axis: int | None) -> torch.Tensor:
    """Keyed standard normals shaped and typed like ``like``."""
    return normal(_stream_keys(stream, purpose, step, like, data_axis, sample_axis)).to(like.dtype)


def draw_uniform(stream: PointStream, purpose: str, step: int, like: torch.Tensor, *, data_axis: int, sample_axis: int | None) -> torch.Tensor:
    """Keyed uniforms on (0, 1) shaped and typed like ``like``."""
    return uniform(_stream_keys(stream, purpose, step, like, data_axis, sample_axis)).to(like.dtype)


# ---- Pyro sample sites from keyed numbers -----------------------------------------------------------------------------


class KeyedSamplingError(ValueError):
    """A site's sampler uses a random operator that keyed sampling cannot answer."""


class _Site(NamedTuple):
    name: str
    prefix: int
    shape: tuple[int, ...]
    data_axis: int | None
    sample_axis: int | None


class _KeyedRandomOps(TorchDispatchMode):
    """Answers torch's random operators inside one site's sampler with keyed numbers of the same law."""

    def __init__(self, stream: PointStream, site: _Site):
        super().__init__()
        self.stream, self.site, self.count = stream, site, 0

    def _keys(self, shape: Sequence[int], device) -> torch.Tensor:
        site, shape = self.site, tuple(shape)
        self.count += 1
        if len(shape) != len(site.shape):
            raise KeyedSamplingError(f"site {site.name!r} draws random numbers of shape {shape} inside a site of shape "
                                     f"{site.shape}: keyed sampling cannot tell which axis holds the datapoints")
        n = len(self.stream.index)
        data_axis = site.data_axis if site.data_axis is not None and shape[site.data_axis] == n else None
        if site.data_axis is not None and data_axis is None and shape[site.data_axis] != 1:
            raise KeyedSamplingError(f"site {site.name!r} draws random numbers of shape {shape}; its data axis "
                                     f"{site.data_axis} holds neither 1 (shared) nor the {n} datapoints")
        return element_keys(prefix_key(site.prefix, self.count), shape, device, data_axis=data_axis, index=self.stream.index,
                            sample_axis=site.sample_axis, offset=self.stream.offset)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet is aten.normal_:
            out, mean, std = args[0], _arg(args, kwargs, 1, "mean", 0.0), _arg(args, kwargs, 2, "std", 1.0)
            return out.copy_(normal(self._keys(out.shape, out.device)).to(out.dtype) * std + mean)
        if packet is aten.normal and func is not aten.normal.float_float:
            mean, std = args[0], args[1]
            ref = mean if isinstance(mean, torch.Tensor) else std
            shape = torch.broadcast_shapes(*(t.shape for t in (mean, std) if isinstance(t, torch.Tensor)))
            return normal(self._keys(shape, ref.device)).to(ref.dtype) * std + mean
        if packet in (aten.randn, aten.normal):
            size = args[0] if packet is aten.randn else args[2]
            dtype, device = kwargs.get("dtype") or torch.get_default_dtype(), kwargs.get("device") or "cpu"
            mean, std = (0.0, 1.0) if packet is aten.randn else (args[0], args[1])
            return (normal(self._keys(size, device)) * std + mean).to(dtype)
        if packet is aten.rand:
            dtype, device = kwargs.get("dtype") or torch.get_default_dtype(), kwargs.get("device") or "cpu"
            return uniform(self._keys(args[0], device)).to(dtype)
        if packet in (aten.randn_like, aten.rand_like):
            like = args[0]
            draw = normal if packet is aten.randn_like else uniform
            return draw(self._keys(like.shape, like.device)).to(kwargs.get("dtype") or like.dtype)
        if packet is aten.uniform_:
            out, low, high = args[0], _arg(args, kwargs, 1, "from", 0.0), _arg(args, kwargs, 2, "to", 1.0)
            return out.copy_((low + (high - low) * uniform(self._keys(out.shape, out.device))).to(out.dtype))
        if packet is aten.exponential_:
            out, rate = args[0], _arg(args, kwargs, 1, "lambd", 1.0)
            return out.copy_((-torch.log(uniform(self._keys(out.shape, out.device))) / rate).to(out.dtype))
        if packet is aten.bernoulli:
            probs = args[0] if func is not aten.bernoulli.p else torch.full_like(args[0], _arg(args, kwargs, 1, "p", 0.5))
            if func is aten.bernoulli.Tensor:
                probs = args[1].expand_as(args[0])
            return (uniform(self._keys(probs.shape, probs.device)) < probs).to(args[0].dtype)
        if packet is aten.bernoulli_:
            out, p = args[0], _arg(args, kwargs, 1, "p", 0.5)
            return out.copy_((uniform(self._keys(out.shape, out.device)) < p).to(out.dtype))
        if torch.Tag.nondeterministic_seeded in func.tags:
            raise KeyedSamplingError(
                f"site {self.site.name!r} is drawn by torch's {func} operator, which keyed per-datapoint sampling does not "
                "answer (it answers normal, uniform, bernoulli and exponential draws); evaluate without a seed"
            )
        return func(*args, **kwargs)


def _arg(args, kwargs, position: int, name: str, default):
    if len(args) > position:
        return args[position]
    return kwargs.get(name, default)


class KeyedSampling(Messenger):
    """Draws every unobserved, not-yet-valued sample site from the keyed numbers of ``stream``.

    ``purpose`` and ``step`` tell apart the draws of one estimator (and of each of its steps); the
    site's name tells apart its sites. The data plate's dim holds the datapoints, the estimators'
    sample plate's dim the samples.
    """

    def __init__(self, stream: PointStream, purpose: str, step: int = 0):
        super().__init__()
        self.stream, self.prefix = stream, prefix_key(stream.seed, purpose, step)

    def _pyro_sample(self, msg) -> None:
        if (msg["is_observed"] or msg["value"] is not None or msg["done"] or msg["infer"].get("enumerate") == "parallel"
                or isinstance(msg["fn"], _Subsample)):  # a plate's indices are no draw
            return
        fn = msg["fn"]
        sample_shape = tuple(msg["kwargs"].get("sample_shape", ()))
        shape = sample_shape + tuple(fn.batch_shape) + tuple(fn.event_shape)
        base = len(sample_shape) + len(fn.batch_shape)
        axes = {f.name: base + f.dim for f in msg["cond_indep_stack"] if f.dim is not None}
        data_axis, sample_axis = axes.get(DATA_PLATE), axes.get(SAMPLE_PLATE)
        site = _Site(msg["name"], prefix_key(self.prefix, msg["name"]), shape, data_axis, sample_axis)
        ops = _KeyedRandomOps(self.stream, site)
        if isinstance(fn, (torch.distributions.Categorical, torch.distributions.OneHotCategorical)):
            msg["value"] = _categorical(fn, shape, ops)
            return
        with ops:
            msg["value"] = fn(*msg["args"], **msg["kwargs"])


def _categorical(fn, shape: tuple[int, ...], ops: _KeyedRandomOps) -> torch.Tensor:
    """A categorical draw by inversion of a keyed uniform, ``#{k : u > F(k)}`` (torch draws it by ``multinomial``)."""
    one_hot = isinstance(fn, torch.distributions.OneHotCategorical)
    probs = fn.probs
    k = probs.shape[-1]
    index_shape = shape[:-1] if one_hot else shape
    u = uniform(ops._keys(shape if not one_hot else index_shape + (1,), probs.device))
    u = u.reshape(index_shape).to(probs.dtype)
    cdf = probs.expand(index_shape + (k,)).cumsum(-1)
    value = (u.unsqueeze(-1) > cdf).sum(-1).clamp(max=k - 1)
    return torch.nn.functional.one_hot(value, k).to(probs.dtype) if one_hot else value


@contextlib.contextmanager
def keyed(stream: PointStream | None, purpose: str, step: int = 0) -> Iterator[None]:
    """Pyro's sample sites drawn from ``stream`` (for ``purpose`` at ``step``); torch's generator without a stream."""
    if stream is None:
        yield
        return
    with KeyedSampling(stream, purpose, step):
        yield
