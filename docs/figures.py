"""The figures of the documentation site, drawn from the package at build time.

    python docs/figures.py OUTDIR

Writes ``poisson.png`` (a GRF source and the Poisson solution it drives, the DiffusionPDE task
on a 64x64 grid) and ``lshape.png`` (a P1 Poisson solution on the L-shaped domain with its
mesh) into ``OUTDIR``; ``docs/hooks.py`` runs it and puts the files under ``images/``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MPLBACKEND", "Agg")

import jax
import jax.numpy as jnp
import jax.random as jr
import matplotlib.pyplot as plt

from pdegen import fem


def poisson_figure(path: str) -> None:
    mesh = fem.unit_square(64)
    V = fem.FunctionSpace(mesh, "P1")
    a = fem.gaussian_random_field(mesh, key=jr.key(0), alpha=2.0, tau=3.0)
    u = fem.Poisson(V, dirichlet=0.0).solve(kappa=jnp.ones(V.ndofs), f=a)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    fem.plot_field(mesh, a, ax=axes[0], title="source a (GRF, alpha=2, tau=3)", cmap="RdBu_r")
    fem.plot_field(mesh, u, ax=axes[1], title="solution u of -Laplacian(u) = a")
    fig.tight_layout()
    fem.save_figure(fig, path)
    plt.close(fig)


def lshape_figure(path: str) -> None:
    mesh = fem.l_shaped(3)
    V = fem.FunctionSpace(mesh, "P1")
    u = fem.Poisson(V, dirichlet=0.0).solve(kappa=jnp.ones(V.ndofs), f=1.0)
    fig, ax = plt.subplots(figsize=(4.8, 4))
    fem.plot_field(mesh, u, ax=ax, title="-Laplacian(u) = 1 on the L-shape (P1)")
    ax.triplot(mesh.points[:, 0], mesh.points[:, 1], mesh.cells[:, :3], lw=0.3, color="white")
    fig.tight_layout()
    fem.save_figure(fig, path)
    plt.close(fig)


def main(outdir: str) -> None:
    jax.config.update("jax_enable_x64", True)
    os.makedirs(outdir, exist_ok=True)
    poisson_figure(os.path.join(outdir, "poisson.png"))
    lshape_figure(os.path.join(outdir, "lshape.png"))


if __name__ == "__main__":
    main(sys.argv[1])
