"""Equinox networks for score models: a U-Net for fields on grids and an MLP for vectors.

Networks act on one example (``vmap`` for batches) and take ``(x, noise_label)`` where
``noise_label`` is a scalar (``log(sigma) / 4`` in :class:`DiffusionModel`). Parameters are
stored in ``dtype`` (``float32`` by default, also when float64 is enabled); inputs are cast
to that dtype, and outputs are returned in it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jax import Array


def _cast_params(tree, dtype):
    return jtu.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)


class SinusoidalEmbedding(eqx.Module):
    """Sinusoidal embedding of a scalar: ``[cos(w_k s), sin(w_k s)]``, shape ``(dim,)``.

    Frequencies ``w_k`` are spaced geometrically on ``[1, max_frequency]``.
    """

    dim: int = eqx.field(static=True)
    max_frequency: float = eqx.field(static=True, default=64.0)

    def __check_init__(self):
        if self.dim < 2 or self.dim % 2:
            raise ValueError(f"SinusoidalEmbedding(dim=...) must be even and >= 2, got {self.dim}")

    def __call__(self, s: Array) -> Array:
        half = self.dim // 2
        exponents = jnp.linspace(0.0, 1.0, half, dtype=s.dtype)
        freqs = jnp.asarray(self.max_frequency, s.dtype) ** exponents
        args = freqs * s
        return jnp.concatenate([jnp.cos(args), jnp.sin(args)])


class FourierEmbedding(eqx.Module):
    """Random Fourier features of a scalar (fixed, not trained), shape ``(dim,)``."""

    frequencies: Array

    def __init__(self, dim: int, scale: float = 16.0, *, key: Array, dtype: Any = jnp.float32):
        if dim < 2 or dim % 2:
            raise ValueError(f"FourierEmbedding(dim=...) must be even and >= 2, got {dim}")
        self.frequencies = scale * jr.normal(key, (dim // 2,), dtype)

    def __call__(self, s: Array) -> Array:
        args = 2.0 * math.pi * jax.lax.stop_gradient(self.frequencies) * s
        return jnp.concatenate([jnp.cos(args), jnp.sin(args)])


def _make_embedding(kind: str, dim: int, *, key: Array, dtype: Any):
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim)
    if kind == "fourier":
        return FourierEmbedding(dim, key=key, dtype=dtype)
    raise ValueError(f"embedding must be 'sinusoidal' or 'fourier', got {kind!r}")


class ScoreMLP(eqx.Module):
    """MLP ``(x: (data_dim,), noise_label: ()) -> (data_dim,)`` for vector data.

    The noise embedding is added to every hidden layer after a per-layer projection.
    """

    embedding: eqx.Module
    embed_layers: list
    layers: list
    out: eqx.nn.Linear
    data_dim: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    embed_dim: int = eqx.field(static=True)
    embedding_kind: str = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def __init__(
        self,
        data_dim: int,
        width: int = 128,
        depth: int = 3,
        embed_dim: int = 32,
        embedding: str = "sinusoidal",
        dtype: Any = "float32",
        *,
        key: Array,
    ):
        if data_dim < 1 or width < 1 or depth < 1:
            raise ValueError(
                f"ScoreMLP needs positive data_dim, width, depth; got {data_dim}, {width}, {depth}"
            )
        dt = jnp.dtype(dtype)
        keys = jr.split(key, 2 * depth + 2)
        self.embedding = _make_embedding(embedding, embed_dim, key=keys[0], dtype=dt)
        sizes = [data_dim] + [width] * depth
        self.layers = [
            eqx.nn.Linear(sizes[i], sizes[i + 1], key=keys[1 + i], dtype=dt) for i in range(depth)
        ]
        self.embed_layers = [
            eqx.nn.Linear(embed_dim, width, key=keys[1 + depth + i], dtype=dt) for i in range(depth)
        ]
        self.out = eqx.nn.Linear(width, data_dim, key=keys[-1], dtype=dt)
        self.data_dim, self.width, self.depth, self.embed_dim = data_dim, width, depth, embed_dim
        self.embedding_kind, self.dtype = embedding, dt.name

    def config(self) -> dict:
        return {
            "kind": "mlp",
            "data_dim": self.data_dim,
            "width": self.width,
            "depth": self.depth,
            "embed_dim": self.embed_dim,
            "embedding": self.embedding_kind,
            "dtype": self.dtype,
        }

    def __call__(self, x: Array, noise_label: Array) -> Array:
        dt = jnp.dtype(self.dtype)
        if x.shape != (self.data_dim,):
            raise ValueError(f"ScoreMLP expects x of shape ({self.data_dim},), got {x.shape}")
        h = x.astype(dt)
        emb = self.embedding(jnp.asarray(noise_label).astype(dt))
        for layer, proj in zip(self.layers, self.embed_layers):
            h = jax.nn.silu(layer(h) + proj(emb))
        return self.out(h)


def _groups(channels: int, groups: int) -> int:
    return math.gcd(channels, groups)


class _ResBlock(eqx.Module):
    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    emb: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None

    def __init__(self, cin, cout, embed_dim, groups, *, key):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.norm1 = eqx.nn.GroupNorm(_groups(cin, groups), cin)
        self.conv1 = eqx.nn.Conv2d(cin, cout, 3, padding=1, key=k1)
        self.emb = eqx.nn.Linear(embed_dim, cout, key=k2)
        self.norm2 = eqx.nn.GroupNorm(_groups(cout, groups), cout)
        conv2 = eqx.nn.Conv2d(cout, cout, 3, padding=1, key=k3)
        # Zero-initialised last convolution: each block starts as the identity.
        self.conv2 = eqx.tree_at(lambda c: c.weight, conv2, jnp.zeros_like(conv2.weight))
        self.skip = eqx.nn.Conv2d(cin, cout, 1, key=k4) if cin != cout else None

    def __call__(self, x, emb):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, None, None]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return h + (x if self.skip is None else self.skip(x))


class _Attention(eqx.Module):
    norm: eqx.nn.GroupNorm
    attention: eqx.nn.MultiheadAttention

    def __init__(self, channels, groups, heads, *, key):
        self.norm = eqx.nn.GroupNorm(_groups(channels, groups), channels)
        self.attention = eqx.nn.MultiheadAttention(heads, channels, use_output_bias=True, key=key)

    def __call__(self, x):
        c, h, w = x.shape
        seq = self.norm(x).reshape(c, h * w).T
        out = self.attention(seq, seq, seq)
        return x + out.T.reshape(c, h, w)


class UNet(eqx.Module):
    """U-Net ``(x: (C, H, W), noise_label: ()) -> (C_out, H, W)`` for fields on grids.

    ``channel_mults`` gives the width of each resolution level relative to
    ``base_channels``; ``H`` and ``W`` must be divisible by ``2 ** (len(channel_mults) - 1)``.
    Sizes range from tiny (``base_channels=8, channel_mults=(1, 2)``: ~15k parameters) to
    DiffusionPDE-like (``base_channels=128, channel_mults=(1, 2, 2, 2), attention=True``).
    """

    embedding: eqx.Module
    embed_mlp: eqx.nn.MLP
    conv_in: eqx.nn.Conv2d
    down: list
    mid: list
    up: list
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    base_channels: int = eqx.field(static=True)
    channel_mults: tuple = eqx.field(static=True)
    num_res_blocks: int = eqx.field(static=True)
    attention: bool = eqx.field(static=True)
    attention_heads: int = eqx.field(static=True)
    groups: int = eqx.field(static=True)
    embedding_kind: str = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention: bool = False,
        attention_heads: int = 1,
        groups: int = 8,
        embedding: str = "sinusoidal",
        dtype: Any = "float32",
        *,
        key: Array,
    ):
        channel_mults = tuple(int(m) for m in channel_mults)
        if (
            in_channels < 1
            or base_channels < 1
            or num_res_blocks < 1
            or not channel_mults
            or min(channel_mults) < 1
        ):
            raise ValueError(
                "UNet needs in_channels >= 1, base_channels >= 1, num_res_blocks >= 1 and a non-empty "
                f"channel_mults of ints >= 1; got {in_channels}, {base_channels}, {num_res_blocks}, "
                f"{channel_mults}"
            )
        out_channels = in_channels if out_channels is None else out_channels
        dt = jnp.dtype(dtype)
        embed_dim = 4 * base_channels
        keys = iter(jr.split(key, 64 + 8 * len(channel_mults) * (num_res_blocks + 2)))
        self.embedding = _make_embedding(
            embedding, base_channels + base_channels % 2, key=next(keys), dtype=dt
        )
        self.embed_mlp = eqx.nn.MLP(
            base_channels + base_channels % 2,
            embed_dim,
            embed_dim,
            1,
            activation=jax.nn.silu,
            key=next(keys),
        )
        self.conv_in = eqx.nn.Conv2d(in_channels, base_channels, 3, padding=1, key=next(keys))
        chans = [base_channels * m for m in channel_mults]
        skip_chans = [base_channels]
        down = []
        cur = base_channels
        for level, ch in enumerate(chans):
            for _ in range(num_res_blocks):
                down.append(_ResBlock(cur, ch, embed_dim, groups, key=next(keys)))
                cur = ch
                skip_chans.append(cur)
            if level < len(chans) - 1:
                down.append(eqx.nn.Conv2d(cur, cur, 3, stride=2, padding=1, key=next(keys)))
                skip_chans.append(cur)
        self.down = down
        mid = [_ResBlock(cur, cur, embed_dim, groups, key=next(keys))]
        if attention:
            mid.append(_Attention(cur, groups, attention_heads, key=next(keys)))
        mid.append(_ResBlock(cur, cur, embed_dim, groups, key=next(keys)))
        self.mid = mid
        up = []
        for level in reversed(range(len(chans))):
            ch = chans[level]
            for _ in range(num_res_blocks + 1):
                up.append(_ResBlock(cur + skip_chans.pop(), ch, embed_dim, groups, key=next(keys)))
                cur = ch
            if level > 0:
                up.append(eqx.nn.Conv2d(cur, cur, 3, padding=1, key=next(keys)))
        self.up = up
        self.norm_out = eqx.nn.GroupNorm(_groups(cur, groups), cur)
        conv_out = eqx.nn.Conv2d(cur, out_channels, 3, padding=1, key=next(keys))
        self.conv_out = eqx.tree_at(lambda c: c.weight, conv_out, jnp.zeros_like(conv_out.weight))
        self.in_channels, self.out_channels, self.base_channels = (
            in_channels,
            out_channels,
            base_channels,
        )
        self.channel_mults, self.num_res_blocks = channel_mults, num_res_blocks
        self.attention, self.attention_heads, self.groups = attention, attention_heads, groups
        self.embedding_kind, self.dtype = embedding, dt.name
        # Parameters in `dtype` (float32 by default) even when float64 is enabled.
        for name in (
            "embedding",
            "embed_mlp",
            "conv_in",
            "down",
            "mid",
            "up",
            "norm_out",
            "conv_out",
        ):
            setattr(self, name, _cast_params(getattr(self, name), dt))

    def config(self) -> dict:
        return {
            "kind": "unet",
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "base_channels": self.base_channels,
            "channel_mults": list(self.channel_mults),
            "num_res_blocks": self.num_res_blocks,
            "attention": self.attention,
            "attention_heads": self.attention_heads,
            "groups": self.groups,
            "embedding": self.embedding_kind,
            "dtype": self.dtype,
        }

    @property
    def size_divisor(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)

    def __call__(self, x: Array, noise_label: Array) -> Array:
        dt = jnp.dtype(self.dtype)
        if x.ndim != 3 or x.shape[0] != self.in_channels:
            raise ValueError(f"UNet expects x of shape ({self.in_channels}, H, W), got {x.shape}")
        if x.shape[1] % self.size_divisor or x.shape[2] % self.size_divisor:
            raise ValueError(
                f"UNet needs H and W divisible by {self.size_divisor}, got {x.shape[1:]}"
            )
        h = x.astype(dt)
        emb = self.embed_mlp(self.embedding(jnp.asarray(noise_label).astype(dt)))
        h = self.conv_in(h)
        skips = [h]
        for block in self.down:
            h = block(h, emb) if isinstance(block, _ResBlock) else block(h)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb) if isinstance(block, _ResBlock) else block(h)
        for block in self.up:
            if isinstance(block, _ResBlock):
                h = block(jnp.concatenate([h, skips.pop()], axis=0), emb)
            else:
                c, hh, ww = h.shape
                h = jax.image.resize(h, (c, 2 * hh, 2 * ww), method="nearest")
                h = block(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


def _network_kinds() -> dict:
    from ._spectral import SpectralDenoiser

    return {"unet": UNet, "mlp": ScoreMLP, "spectral": SpectralDenoiser}


def network_from_config(config: dict, *, key: Array | None = None) -> eqx.Module:
    """Build a network from ``network.config()``; weights are random (``key``, default key 0)."""
    kinds = _network_kinds()
    if not isinstance(config, dict) or config.get("kind") not in kinds:
        raise ValueError(
            f"network_from_config(config=...) needs a dict with 'kind' in {sorted(kinds)}, got {config!r}"
        )
    kwargs = {k: v for k, v in config.items() if k != "kind"}
    if "channel_mults" in kwargs:
        kwargs["channel_mults"] = tuple(kwargs["channel_mults"])
    return kinds[config["kind"]](**kwargs, key=jr.key(0) if key is None else key)


def count_parameters(network: eqx.Module) -> int:
    """Number of trainable scalar parameters (also for abstract networks from ``eqx.filter_eval_shape``)."""

    def inexact(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return jnp.issubdtype(x.dtype, jnp.inexact)
        return eqx.is_inexact_array(x)

    leaves = jtu.tree_leaves(eqx.filter(network, inexact))
    return int(sum(leaf.size for leaf in leaves))
