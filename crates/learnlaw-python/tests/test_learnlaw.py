"""The Python package end to end: jobs with progress and stopping, run directories as arrays, the
engine operations against finite differences, and errors as exceptions. Small sizes: seconds each."""

import os
import sys

import numpy as np
import pytest

import learnlaw

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def perceptron_arrays(n=48, k=16, d=6, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    x, xd = rng.normal(size=(n, d)), rng.normal(size=(k, d))
    return x, (x @ w > 0).astype(np.float32), xd, (xd @ w > 0).astype(np.float32)


def token_rows(n, length, vocab, seed):
    """Random token rows with ids ≥ 2 (0 and 1 are BOS and PAD), a few trailing PADs."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(2, vocab, size=(n, length)).astype(np.uint32)
    rows[::3, -2:] = 1
    return rows


@pytest.fixture(scope="module")
def perceptron_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "perceptron.safetensors"
    assert learnlaw.cli("data", "perceptron", "--out", path, "--dim", 8, "--train", 64, "--dev", 32, "--test", 32)
    return path


@pytest.fixture(scope="module")
def searched(perceptron_data, tmp_path_factory):
    """A finished 3-epoch perceptron search and its evaluation, with the progress events seen."""
    out = tmp_path_factory.mktemp("runs") / "searched"
    events = []
    run = learnlaw.search(out, perceptron_data, steps=30, eta=0.5, epochs=3, outer_lr=0.05, progress=events.append)
    run = learnlaw.evaluate(out, progress=events.append)
    return run, events


def test_search_reports_progress_and_returns_the_run(searched):
    run, events = searched
    epochs = [e for e in events if e["unit"] == "epochs"]
    assert [e["done"] for e in epochs] == [1, 2, 3] and all(e["total"] == 3 for e in epochs)
    assert epochs[-1]["j"] < epochs[-1]["j_first"]
    steps = [e for e in events if e["unit"] == "steps"]
    assert steps[-1]["done"] == steps[-1]["total"] == 60  # the evaluation retrains twice, T = 30
    assert run.finished and run.epochs_done == 3
    assert run.gamma.shape == (30, 64) and run.gamma.dtype == np.float32
    np.testing.assert_allclose(run.gamma.sum(axis=1), 1.0, rtol=1e-4)
    # An epoch's event carries J of the policy it started from; the history ends with the final one.
    assert run.history["j"].shape == (4,) and run.history["j"][2] == epochs[-1]["j"]
    assert run.config["search"]["steps"] == 30 and run.config["task"] == "perceptron"


def test_evaluation_gives_summary_and_curves(searched):
    run, _ = searched
    assert run.summary is not None and run.evaluated_epoch == 3
    for name in ("dev_constant", "test_constant", "dev_policy", "test_policy"):
        assert run.curves[name].shape == (31,)
    auc = run.curves["dev_policy"][:-1].mean()  # J = (1/T) Σ_{t<T} ... + the last term
    assert np.isfinite(auc)


def test_returning_false_stops_a_search_which_the_same_call_resumes(perceptron_data, tmp_path):
    out = tmp_path / "stopped"
    run = learnlaw.search(out, perceptron_data, steps=20, eta=0.5, epochs=3, progress=lambda e: e["done"] < 1)
    assert run.epochs_done == 1 and not run.finished
    assert learnlaw.cli("search", "--data", perceptron_data, "--out", out, "--steps", 20, "--eta", 0.5, "--epochs", 3)
    assert learnlaw.open_run(out).finished


def test_ctrl_c_stops_a_search_with_its_policy_saved(perceptron_data, tmp_path):
    import signal
    import threading
    import time

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.5, signal.raise_signal, (signal.SIGINT,))
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            learnlaw.search(tmp_path / "r", perceptron_data, steps=20, epochs=10**8)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - start < 30
    run = learnlaw.open_run(tmp_path / "r")
    assert run.epochs_done >= 1 and not run.finished


def test_an_exception_in_the_callback_stops_the_search_and_is_raised(perceptron_data, tmp_path):
    def fail(event):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        learnlaw.search(tmp_path / "r", perceptron_data, steps=20, epochs=3, progress=fail)
    assert learnlaw.open_run(tmp_path / "r").epochs_done == 1  # saved, resumable


def test_run_thetas_agree_with_the_engine(searched, perceptron_data):
    run, _ = searched
    thetas = run.thetas([0, 30])
    theta0, losses0 = thetas[0]
    theta_t, losses_t = thetas[30]
    assert theta0.shape == (8,) and not np.allclose(theta0, theta_t)
    np.testing.assert_array_equal(run.theta0(), theta0)
    np.testing.assert_array_equal(run.theta_final(), theta_t)
    # The same θ through an engine built from the run's data, via the package's own file reader.
    x, y = read_perceptron(perceptron_data, "train")
    xd, yd = read_perceptron(perceptron_data, "dev")
    engine = learnlaw.Perceptron(x, y, xd, yd)
    np.testing.assert_allclose(engine.theta0(seed=10), theta0, rtol=1e-6)
    np.testing.assert_allclose(engine.losses(theta_t), losses_t, rtol=1e-5)
    # θ_1 = θ_0 − η Σ γ_0,n ∇l_n: one engine step under the run's first policy row.
    theta1 = run.thetas([1])[1][0]
    np.testing.assert_allclose(engine.step(theta0, run.gamma[0], 0.5), theta1, rtol=1e-5, atol=1e-7)


def read_perceptron(path, which):
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        from check_export import read_safetensors
    finally:
        sys.path.pop(0)
    tensors, _ = read_safetensors(path)
    (xs, xf), (_, yf) = tensors[f"x_{which}"], tensors[f"y_{which}"]
    return np.array(xf, dtype=np.float32).reshape(xs), np.array(yf, dtype=np.float32)


def finite_differences(f, x, v, h=1e-5):
    return (f(x + h * v) - f(x - h * v)) / (2 * h)


@pytest.mark.parametrize("task", ["perceptron", "transformer"])
def test_engine_operations_match_finite_differences_in_f64(task):
    if task == "perceptron":
        engine = learnlaw.Perceptron(*perceptron_arrays(), backend="cpu-f64")
    else:
        engine = learnlaw.Transformer(token_rows(12, 9, 40, 1), token_rows(6, 9, 40, 2), 40, hidden=8, heads=2, layers=1, backend="cpu-f64")
    n, p = engine.num_train, engine.num_params
    rng = np.random.default_rng(3)
    theta, v = engine.theta0(seed=4), rng.normal(size=p)
    gamma = rng.uniform(0.5, 1.5, size=n)
    gamma /= gamma.sum()
    # ∇l_n·v against differences of the per-example losses.
    fd = finite_differences(engine.losses, theta, v)
    np.testing.assert_allclose(engine.dots(theta, v), fd, rtol=1e-6, atol=1e-8)
    # The step is θ − η Σ γ_n ∇l_n, so (θ − step)/η dotted with v is Σ γ_n (∇l_n·v).
    grad = (theta - engine.step(theta, gamma, 0.25)) / 0.25
    assert grad @ v == pytest.approx(gamma @ engine.dots(theta, v), rel=1e-9)
    # H·v against differences of that gradient.
    weighted_grad = lambda th: (th - engine.step(th, gamma, 1.0))  # noqa: E731
    np.testing.assert_allclose(engine.hvp(theta, gamma, v), finite_differences(weighted_grad, theta, v), rtol=1e-5, atol=1e-8)
    # ∂J/∂γ of an unroll against differences of J along a direction that keeps rows' sums.
    steps = 4
    g0 = np.full((steps, n), 1.0 / n)
    j, curve, dj = engine.unroll_gradient(theta, g0, 0.5)
    assert curve.shape == (steps + 1,) and dj.shape == (steps, n)
    assert j == pytest.approx(curve.sum() / steps, rel=1e-12)  # J = (1/T) Σ_{t=0..T} L_dev(θ_t)
    d = rng.normal(size=(steps, n)) / n
    fd_j = finite_differences(lambda g: engine.unroll_gradient(theta, g, 0.5)[0], g0, d, h=1e-4)
    assert (dj * d).sum() == pytest.approx(fd_j, rel=1e-6, abs=1e-10)
    engine.close()


def test_f32_engine_agrees_with_f64():
    arrays = perceptron_arrays()
    with learnlaw.Perceptron(*arrays, backend="cpu") as e32, learnlaw.Perceptron(*arrays, backend="cpu-f64") as e64:
        theta = e64.theta0()
        loss32, g32 = e32.loss_grad(theta)
        loss64, g64 = e64.loss_grad(theta)
        assert loss32 == pytest.approx(loss64, rel=1e-6)
        np.testing.assert_allclose(e32.dots(theta, g32), e64.dots(theta, g64), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(e32.hvp(theta, np.full(48, 1 / 48), g64), e64.hvp(theta, np.full(48, 1 / 48), g64), rtol=1e-4, atol=1e-6)


PERCEPTRON_BACKENDS = ["cpu", "wgpu", "wgpu-f16", "cuda", "cuda-bf16", "cuda-f16"]
TRANSFORMER_BACKENDS = ["cpu", "wgpu", "cuda", "cuda-bf16"]


def engine_or_skip(make, backend):
    """The engine on `backend`, or a visible skip where this machine has no such device (a failure
    for wgpu under LEARNLAW_REQUIRE_WGPU=1, as in CI, where lavapipe must run it)."""
    try:
        return make(backend)
    except learnlaw.UnavailableError as e:
        if backend.startswith("wgpu") and os.environ.get("LEARNLAW_REQUIRE_WGPU") == "1":
            raise
        pytest.skip(f"{backend} unavailable here: {e}")


@pytest.mark.parametrize("task,backend", [("perceptron", b) for b in PERCEPTRON_BACKENDS] + [("transformer", b) for b in TRANSFORMER_BACKENDS])
def test_every_backend_present_agrees_with_cpu_f64(task, backend):
    if task == "perceptron":
        arrays = perceptron_arrays(n=40, k=12, d=5)
        make = lambda b: learnlaw.Perceptron(*arrays, backend=b)  # noqa: E731
        # 16-bit storage of X rounds the inputs: the tolerance of their rounding.
        tol = {"wgpu-f16": 2e-3, "cuda-f16": 2e-3, "cuda-bf16": 1e-2}.get(backend, 1e-4)
    else:
        rows = token_rows(10, 9, 30, 5), token_rows(4, 9, 30, 6)
        make = lambda b: learnlaw.Transformer(*rows, 30, hidden=8, heads=2, layers=1, backend=b)  # noqa: E731
        tol = 3e-2 if backend == "cuda-bf16" else 1e-4
    engine = engine_or_skip(make, backend)
    with engine, make("cpu-f64") as reference:
        theta = reference.theta0()
        n = reference.num_train
        gamma = np.full(n, 1.0 / n)
        _, v = reference.loss_grad(theta)
        for name, args in [("losses", (theta,)), ("dots", (theta, v)), ("hvp", (theta, gamma, v)), ("step", (theta, gamma, 0.5))]:
            got, want = getattr(engine, name)(*args), getattr(reference, name)(*args)
            scale = np.abs(want).max()
            assert np.abs(got - want).max() <= tol * scale, f"{backend} {name}: max error {np.abs(got - want).max():.3g}, scale {scale:.3g}"
        g = np.full((3, n), 1.0 / n)
        j, _, dj = engine.unroll_gradient(theta, g, 0.5)
        j_ref, _, dj_ref = reference.unroll_gradient(theta, g, 0.5)
        assert j == pytest.approx(j_ref, rel=tol)
        assert np.abs(dj - dj_ref).max() <= 10 * tol * np.abs(dj_ref).max()


def test_bad_input_raises_input_error_with_the_library_message():
    x, y, xd, yd = perceptron_arrays()
    engine = learnlaw.Perceptron(x, y, xd, yd)
    theta = engine.theta0()
    with pytest.raises(learnlaw.InputError, match="shape mismatch in theta: expected 6, got 5"):
        engine.losses(theta[:5])
    with pytest.raises(ValueError, match="entry 2 is NaN"):  # InputError is a ValueError
        engine.dots(theta, np.where(np.arange(6) == 2, np.nan, 1.0))
    with pytest.raises(learnlaw.InputError, match="gamma"):
        engine.unroll_gradient(theta, np.full((3, 47), 1 / 47), 0.5)
    with pytest.raises(learnlaw.InputError, match="eta"):
        engine.step(theta, np.full(48, 1 / 48), -1.0)
    with pytest.raises(learnlaw.InputError, match="label 2"):
        learnlaw.Perceptron(x, y * 2, xd, yd)
    with pytest.raises(learnlaw.InputError, match="x_dev"):
        learnlaw.Perceptron(x, y, xd[:, :3], yd)
    with pytest.raises(learnlaw.InputError, match="backend \"gpu\": expected one of cpu"):
        learnlaw.Perceptron(x, y, xd, yd, backend="gpu")
    with pytest.raises(learnlaw.InputError, match="negative"):
        learnlaw.Transformer(-token_rows(4, 5, 9, 0).astype(np.int64), token_rows(2, 5, 9, 1), 9)
    with pytest.raises(learnlaw.InputError, match="vocab"):
        learnlaw.Transformer(token_rows(4, 5, 40, 0), token_rows(2, 5, 40, 1), 9)


def test_command_errors_raise_with_the_command_message(perceptron_data, tmp_path):
    with pytest.raises(learnlaw.InputError, match="unexpected argument '--bogus'"):
        learnlaw.search(tmp_path / "r", perceptron_data, bogus=1)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(learnlaw.InputError, match="corrupt.safetensors"):
        learnlaw.search(tmp_path / "r2", corrupt)
    with pytest.raises(learnlaw.InputError, match="not a run directory"):
        learnlaw.open_run(tmp_path)
    with pytest.raises(learnlaw.NumericalError, match="off the simplex"):
        learnlaw.search(tmp_path / "r3", perceptron_data, steps=50, eta=1e30, epochs=1)


def test_a_missing_gpu_is_an_unavailable_error():
    x, y, xd, yd = perceptron_arrays()
    try:
        engine = learnlaw.Perceptron(x, y, xd, yd, backend="cuda")
    except learnlaw.UnavailableError as e:
        assert "cuda" in str(e)
    else:
        engine.close()
        pytest.skip("a CUDA device is present")


# --------------------------------------------------------------------------------------------
# With torch: the exported Transformer's per-example dots and HVP against torch.func on the state
# dict loaded into the official module's layout (scripts/check_export.py's reimplementation).


def test_exported_transformer_matches_torch_func(tmp_path):
    torch = pytest.importorskip("torch", reason="torch not installed: the torch.func comparison is skipped")
    pytest.importorskip("safetensors", reason="safetensors not installed: the torch.func comparison is skipped")
    from torch.func import functional_call, grad, vmap

    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        import check_export
    finally:
        sys.path.pop(0)
    from safetensors.torch import load_file

    out = tmp_path / "tr"
    run = learnlaw.reproduce("transformer", out, train=24, dev=8, test=8, hidden=16, heads=2, steps=6, epochs=1)
    export_dir = learnlaw.export(out)
    data = load_file(str(out / "data.safetensors"))
    train, dev = data["train"].long(), data["dev"].long()
    m = run.config["model"]
    engine = learnlaw.Transformer(train.numpy().astype(np.uint32), dev.numpy().astype(np.uint32), m["vocab_size"], hidden=m["hidden"], heads=m["heads"], layers=m["layers"], backend="cpu-f64")

    import json
    from safetensors import safe_open

    path = os.path.join(export_dir, "theta_final.safetensors")
    with safe_open(path, "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    _, Transformer, _ = check_export.torch_modules()
    model = Transformer(cfg).double()
    model.load_state_dict(load_file(path), strict=True)
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss_one(params, row):
        return model_losses(params, row.unsqueeze(0))[0]

    def model_losses(params, rows):
        ids, labels = rows[:, :-1], rows[:, 1:]
        logits = functional_call(model, (params, buffers), (ids,)).logits
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none").view(labels.shape)
        mask = (labels != check_export.PAD).to(ce.dtype)
        return (ce * mask).sum(-1) / mask.sum(-1)

    theta = run.theta_final()
    # v = ∇L_dev(θ) in each layout: the dots ∇l_n·v do not depend on the layout.
    _, v_flat = engine.loss_grad(theta)
    v = torch.func.grad(lambda p: model_losses(p, dev).mean())(params)
    per_example = vmap(grad(loss_one), in_dims=(None, 0))(params, train)
    dots_torch = sum((per_example[k].flatten(1) * v[k].flatten()).sum(1) for k in v).numpy()
    np.testing.assert_allclose(engine.dots(theta, v_flat), dots_torch, rtol=1e-6, atol=1e-9)
    # H·v of the γ-weighted training loss: its values are the same up to the layout's permutation,
    # and its dots with every ∇l_n are layout-free.
    gamma = np.full(engine.num_train, 1.0 / engine.num_train)
    hv_flat = engine.hvp(theta, gamma, v_flat)
    _, hv = torch.func.jvp(lambda p: torch.func.grad(lambda q: model_losses(q, train).mean())(p), (params,), (v,))
    hv_torch = torch.cat([hv[k].flatten() for k in hv]).numpy()
    np.testing.assert_allclose(np.sort(hv_flat), np.sort(hv_torch), rtol=1e-5, atol=1e-9)
    dots_hv_torch = sum((per_example[k].flatten(1) * hv[k].flatten()).sum(1) for k in hv).numpy()
    np.testing.assert_allclose(engine.dots(theta, hv_flat), dots_hv_torch, rtol=1e-5, atol=1e-9)
