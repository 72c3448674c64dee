"""Reliability of training and sampling: resume after a kill, bad data, divergence, process 0
writes only, labelled sample figures with progress, strict JSON."""

import argparse
import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import pytest

from pdegen import models
from pdegen.models import _cli, _training
from pdegen.models._cli import register


class Killed(Exception):
    """Stands for SIGKILL: raised from inside the training loop, nothing runs after it."""


def mlp_setup(key, *, steps=8, checkpoint_every=3, log_every=2):
    data = np.random.default_rng(2).normal(size=(32, 3)) * np.array([[1.0, 2.0, 0.5]])
    net = models.ScoreMLP(3, width=16, depth=3, embed_dim=16, key=key)
    model = models.DiffusionModel(net, models.VPSDE(), models.Normalisation.fit(data), (3,))
    config = models.TrainConfig(
        steps=steps,
        batch_size=4,
        warmup_steps=2,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
    )
    return data, model, config


def arrays(tree):
    return [np.asarray(x) for x in jtu.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))]


def assert_bitwise_equal(a, b):
    la, lb = arrays(a), arrays(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def patch_train_step(monkeypatch, after):
    """Wrap ``train_step``: ``after(new_state)`` may raise or return a replacement state."""
    real = _training.train_step

    def wrapped(state, *args):
        new_state, loss = real(state, *args)
        replaced = after(new_state)
        return (new_state if replaced is None else replaced), loss

    monkeypatch.setattr(_training, "train_step", wrapped)


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="pdegen")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def strict_json(path):
    def reject(token):
        raise AssertionError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=reject)


# --- resume after a kill ------------------------------------------------------------------------


def test_resume_after_kill_between_log_steps(key, tmp_path, monkeypatch):
    # Checkpoints at steps 3 and 6, losses logged every 2 steps: the kill comes right after the
    # checkpoint at step 3, i.e. in the middle of a logging window (3 is not a multiple of 2).
    data, model, config = mlp_setup(key)
    full = models.train(
        model, data, key=key, config=config, out_dir=tmp_path / "full", progress=False
    )
    assert len(full.losses) == 8 and np.all(np.isfinite(full.losses))

    def kill_after_step_3(state):
        if int(state.step) == 4:
            raise Killed

    with monkeypatch.context() as m:
        patch_train_step(m, kill_after_step_3)
        with pytest.raises(Killed):
            models.train(
                model, data, key=key, config=config, out_dir=tmp_path / "part", progress=False
            )
    meta = strict_json(tmp_path / "part" / "metadata.json")
    assert meta["step"] == 3
    assert np.array_equal(meta["losses"], full.losses[:3])  # the checkpoint holds every step's loss
    resumed = models.train(
        model, data, key=jr.key(999), config=config, out_dir=tmp_path / "part", progress=False
    )
    assert int(resumed.state.step) == 8
    assert_bitwise_equal(resumed.state, full.state)
    assert np.array_equal(resumed.losses, full.losses)
    assert np.array_equal(strict_json(tmp_path / "part" / "metadata.json")["losses"], full.losses)
    assert (tmp_path / "part" / "loss.png").stat().st_size > 0


def test_resume_of_a_checkpoint_with_a_loss_gap_keeps_steps_aligned(key, tmp_path):
    # Checkpoints written before the fix could miss the losses since the last log flush.
    data, model, config = mlp_setup(key)
    out = tmp_path / "ck"
    models.train(model, data, key=key, config=config, out_dir=out, progress=False, stop_after=3)
    meta = json.loads((out / "metadata.json").read_text())
    meta["losses"] = meta["losses"][:2]
    (out / "metadata.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="2 entries for 3 steps"):
        resumed = models.train(model, data, key=key, config=config, out_dir=out, progress=False)
    assert (
        len(resumed.losses) == 8
        and np.isnan(resumed.losses[0])
        and np.all(np.isfinite(resumed.losses[1:]))
    )
    assert (
        strict_json(out / "metadata.json")["losses"][0] is None
    )  # strict JSON: NaN written as null


# --- bad data ------------------------------------------------------------------------------------


def forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started on bad input")

    monkeypatch.setattr(_training, "train_step", fail)


def test_bad_arrays_fail_before_training(key, tmp_path, monkeypatch):
    data, model, config = mlp_setup(key)
    forbid_training(monkeypatch)
    nan = data.copy()
    nan[5, 2] = np.inf
    cases = [
        (nan, ValueError, r"`data` contains 1 NaN or infinite value\(s\) \(first in example 5\)"),
        (data[:0], ValueError, r"`data` is empty"),
        (data[:, :2], ValueError, r"`data` has shape \(32, 2\).*\(3,\)"),
        (data[None], ValueError, r"`data` must have shape \(N, 3\)"),
        (data.astype(complex), TypeError, "real numbers"),
        (np.array([["a", "b", "c"]]), TypeError, "real numbers"),
    ]
    for bad, err, match in cases:
        with pytest.raises(err, match=match):
            models.train(
                model, bad, key=key, config=config, out_dir=tmp_path / "ck", progress=False
            )
    assert not (tmp_path / "ck").exists()
    with pytest.raises(ValueError, match="has 1 example"):
        models.check_data(data[:1], min_examples=2)


def bad_files(tmp_path):
    np.savez(tmp_path / "good.npz", fields=np.ones((8, 3)))
    raw = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(700))
    (tmp_path / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.npz").write_bytes(b"")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return ["random.npz", "truncated.npz", "empty.npz", "objects.npy"]


def test_corrupt_files_give_one_clear_error(tmp_path):
    for name in bad_files(tmp_path):
        path = tmp_path / name
        with pytest.raises(ValueError, match="not a pdegen data set \\(.npz\\) or corrupt") as info:
            models.load_data(path)
        assert str(path) in str(info.value)
        assert "pickle" not in str(info.value).lower()  # never advice to load unsafely
    with pytest.raises(FileNotFoundError, match="no such file"):
        models.load_data(tmp_path / "missing.npz")


def test_cli_train_rejects_bad_data_before_any_work(tmp_path, monkeypatch):
    forbid_training(monkeypatch)
    files = bad_files(tmp_path)
    nan = np.random.default_rng(0).normal(size=(16, 2))
    nan[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", fields=nan)
    np.savez(tmp_path / "complex.npz", fields=nan.astype(complex))
    np.savez(tmp_path / "empty-array.npz", fields=np.zeros((0, 2)))
    np.savez(tmp_path / "one.npz", fields=np.zeros((1, 2)))
    np.savez(tmp_path / "scalar.npz", fields=np.float64(1.0))
    expected = {name: "not a pdegen data set" for name in files}
    expected.update(
        {
            "nan.npz": "contains 1 NaN",
            "empty-array.npz": "is empty",
            "one.npz": "at least 2",
            "complex.npz": "real numbers",
            "scalar.npz": "expected arrays",
        }
    )
    for name, match in expected.items():
        with pytest.raises(ValueError, match=match) as info:
            run_cli(
                [
                    "train",
                    "--data",
                    str(tmp_path / name),
                    "--out",
                    str(tmp_path / "ck"),
                    "--steps",
                    "2",
                    "--quiet",
                ]
            )
        message = str(info.value)
        assert name in message and "Normalisation" not in message and "allow_pickle" not in message
    assert not (tmp_path / "ck").exists()


# --- output folder ------------------------------------------------------------------------------


def test_out_that_is_a_file_fails_at_the_start(key, tmp_path, monkeypatch):
    data, model, config = mlp_setup(key)
    forbid_training(monkeypatch)
    taken = tmp_path / "taken"
    taken.write_text("x")
    np.savez(tmp_path / "d.npz", fields=data)
    for out in (taken, taken / "below"):
        with pytest.raises(FileExistsError, match=r"train\(out_dir=...\).*not a folder"):
            models.train(model, data, key=key, config=config, out_dir=out, progress=False)
        with pytest.raises(FileExistsError, match="--out.*not a folder"):
            run_cli(["train", "--data", str(tmp_path / "d.npz"), "--out", str(out), "--quiet"])
    with pytest.raises(FileExistsError, match="--out.*not a folder"):
        run_cli(["sample", "--checkpoint", str(tmp_path), "--out", str(taken)])
    assert taken.read_text() == "x"


# --- divergence ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "poison_at, log_every, match",
    [
        (5, 2, "loss became NaN at step 6 of 8"),  # found at the log step 6
        (
            6,
            4,
            "state holds NaN or infinite values after step 6",
        ),  # losses fine; found before saving
    ],
)
def test_divergence_stops_and_keeps_last_good_checkpoint(
    poison_at, log_every, match, key, tmp_path, monkeypatch
):
    data, model, config = mlp_setup(key, log_every=log_every)
    out = tmp_path / "ck"

    def poison(state):
        if int(state.step) == poison_at:
            nan = jnp.float32(jnp.nan)
            return eqx.tree_at(
                lambda s: s.model,
                state,
                jtu.tree_map(lambda x: x * nan if eqx.is_inexact_array(x) else x, state.model),
            )
        return None

    patch_train_step(monkeypatch, poison)
    with pytest.raises(models.TrainingDivergedError, match=match) as info:
        models.train(model, data, key=key, config=config, out_dir=out, progress=False)
    assert "last good checkpoint" in str(info.value) and "(step 3)" in str(info.value)
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, ValueError)
    meta = strict_json(out / "metadata.json")
    assert meta["step"] == 3 and len(meta["losses"]) == 3
    assert [p.name for p in out.glob("state-*.eqx")] == ["state-000000003.eqx"]
    loaded = models.load_checkpoint(out, ema=False)
    assert loaded.step == 3 and all(np.all(np.isfinite(a)) for a in arrays(loaded.model))
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_divergence_from_a_huge_learning_rate(key, tmp_path):
    data, model, _ = mlp_setup(key)
    config = models.TrainConfig(
        steps=8, batch_size=4, warmup_steps=0, learning_rate=1e38, log_every=2
    )
    with pytest.raises(
        models.TrainingDivergedError, match=r"at step \d of 8.*no checkpoint was written"
    ):
        models.train(model, data, key=key, config=config, out_dir=tmp_path / "ck", progress=False)
    assert not (tmp_path / "ck" / "metadata.json").exists()


def test_save_checkpoint_refuses_non_finite_state(key, tmp_path):
    _, model, config = mlp_setup(key)
    state = models.init_train_state(model, models.make_optimizer(config))
    bad = eqx.tree_at(
        lambda s: s.ema_model,
        state,
        jtu.tree_map(
            lambda x: x * jnp.float32(jnp.inf) if eqx.is_inexact_array(x) else x, state.ema_model
        ),
    )
    with pytest.raises(ValueError, match="NaN or infinite"):
        models.save_checkpoint(tmp_path / "ck", bad, {})
    assert not (tmp_path / "ck").exists()


# --- only process 0 writes ----------------------------------------------------------------------


def test_process_other_than_0_writes_nothing(key, tmp_path, monkeypatch):
    data, model, config = mlp_setup(key, steps=4)
    models.export_model(tmp_path / "exported", model, {}, step=0)  # as process 0, to sample from
    monkeypatch.setattr(jax, "process_index", lambda *args, **kwargs: 1)
    assert not models.is_writer()
    result = models.train(
        model, data, key=key, config=config, out_dir=tmp_path / "ck", progress=False
    )
    assert int(result.state.step) == 4 and len(result.losses) == 4
    state = result.state
    models.save_checkpoint(tmp_path / "ck2", state, {})
    models.export_model(tmp_path / "ex2", state.ema_model, {}, step=4)
    np.savez(tmp_path / "d.npz", fields=data)
    assert (
        run_cli(
            [
                "train",
                "--data",
                str(tmp_path / "d.npz"),
                "--out",
                str(tmp_path / "ck3"),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--channels",
                "8",
                "--depth",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        run_cli(
            [
                "sample",
                "--checkpoint",
                str(tmp_path / "exported"),
                "--n",
                "2",
                "--out",
                str(tmp_path / "s"),
                "--method",
                "ddim",
                "--steps",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    assert sorted(os.listdir(tmp_path)) == ["d.npz", "exported"]


# --- sampling: progress and a labelled figure ----------------------------------------------------


def test_plot_samples_labels_every_channel():
    import matplotlib.pyplot as plt

    samples = np.random.default_rng(0).normal(size=(3, 2, 6, 6))
    fig = models.plot_samples(samples, channel_names=["a", "u"], title="tiny (trained 5 steps)")
    try:
        titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
        assert titles == ["a #0", "a #1", "a #2", "u #0", "u #1", "u #2"]
        assert fig._suptitle.get_text() == "tiny (trained 5 steps)"
        colourbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert [cb.get_ylabel() for cb in colourbars] == ["a", "u"]
        fig.canvas.draw()  # constrained layout: no colour bar overlaps a panel
        panels = [ax.get_window_extent() for ax in fig.axes if ax not in colourbars]
        for cb in colourbars:
            box = cb.get_window_extent()
            for panel in panels:
                width = min(box.x1, panel.x1) - max(box.x0, panel.x0)
                height = min(box.y1, panel.y1) - max(box.y0, panel.y0)
                assert width <= 0 or height <= 0
    finally:
        plt.close(fig)
    fig = models.plot_samples(np.zeros((4, 2)), channel_names=["x", "y"])
    assert fig.axes[0].get_xlabel() == "x" and fig.axes[0].get_ylabel() == "y"
    plt.close(fig)
    with pytest.raises(ValueError, match="3 names for 2 channels"):
        models.plot_samples(samples, channel_names=["a", "b", "c"])


def test_batched_sampling_equals_one_batch(key):
    _, model, _ = mlp_setup(key)
    one = models.sample_model(model, 5, key=key, method="ddim", num_steps=2)
    batched = models.sample_model(model, 5, key=key, method="ddim", num_steps=2, batch_size=2)
    assert np.array_equal(np.asarray(one), np.asarray(batched))
    with pytest.raises(ValueError, match="batch_size"):
        models.sample_model(model, 5, key=key, batch_size=0)


def test_cli_sample_shows_progress_and_writes_a_labelled_figure(tmp_path, capsys, monkeypatch):
    # Weights filled in from the abstract network: eager initialisation compiles many small kernels.
    abstract = eqx.filter_eval_shape(
        models.UNet, 2, base_channels=4, channel_mults=(1, 2), key=jr.key(0)
    )
    rng = np.random.default_rng(0)
    net = jtu.tree_map(
        lambda s: (
            jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype)
            if isinstance(s, jax.ShapeDtypeStruct)
            else s
        ),
        abstract,
    )
    model = models.DiffusionModel(net, models.VPSDE(), models.Normalisation.identity(2), (2, 8, 8))
    models.export_model(
        tmp_path / "tiny", model, {"name": "tiny-unet", "channels": ["a", "u"]}, step=7
    )
    figures = []
    save = _cli._save_figure

    def keep(path, fig):
        figures.append(([ax.get_title() for ax in fig.axes], fig._suptitle.get_text()))
        save(path, fig)

    monkeypatch.setattr(_cli, "_save_figure", keep)
    assert (
        run_cli(
            [
                "sample",
                "--checkpoint",
                str(tmp_path / "tiny"),
                "--n",
                "3",
                "--batch-size",
                "2",
                "--out",
                str(tmp_path / "s"),
                "--method",
                "ddim",
                "--steps",
                "2",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "sampling 3 from tiny-unet (trained 7 steps)" in captured.out
    assert "sample" in captured.err and "3/3" in captured.err  # the tqdm bar, updated per batch
    with np.load(tmp_path / "s" / "samples.npz") as f:
        assert f["samples"].shape == (3, 2, 8, 8) and np.all(np.isfinite(f["samples"]))
    assert (tmp_path / "s" / "samples.png").stat().st_size > 0
    ((titles, suptitle),) = figures
    assert "a #0" in titles and "u #2" in titles
    assert (
        "tiny-unet" in suptitle and "trained 7 steps" in suptitle and "2 sampler steps" in suptitle
    )


def test_cli_train_stores_channel_names_for_sample(tmp_path):
    fields = np.random.default_rng(0).normal(size=(16, 2))
    np.savez(tmp_path / "d.npz", fields=fields, meta=np.array(json.dumps({"channels": ["a", "u"]})))
    assert (
        run_cli(
            [
                "train",
                "--data",
                str(tmp_path / "d.npz"),
                "--out",
                str(tmp_path / "ck"),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--channels",
                "8",
                "--depth",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    meta = strict_json(tmp_path / "ck" / "metadata.json")
    assert meta["channels"] == ["a", "u"] and meta["data"] == str(tmp_path / "d.npz")
