"""Tests of dagrow.tasks: built-in tasks, splits, batches, metrics and user data files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dagrow.tasks import (
    DataError,
    Split,
    Task,
    fit_task,
    list_tasks,
    load_data,
    make_task,
    register_task,
    task_info,
)

BUILT_IN = ["sin50", "teacher_student", "regression1d", "moons", "digits", "multisin", "bars"]
DEFAULT_N = {
    "sin50": 20000,
    "teacher_student": 1000,
    "regression1d": 200,
    "moons": 200,
    "digits": 1797,
    "multisin": 1000,
    "bars": 2000,
}


def all_x(task: Task) -> torch.Tensor:
    return torch.cat([task.train.x, task.val.x, task.test.x])


def all_y(task: Task) -> torch.Tensor:
    return torch.cat([task.train.y, task.val.y, task.test.y])


def sorted_rows(a: np.ndarray) -> np.ndarray:
    """Rows of a 2-D array in lexicographic order (a multiset of rows, comparable with ==)."""
    return a[np.lexsort(a.T[::-1])]


# --------------------------------------------------------------------------------------------------
# Registry and errors
# --------------------------------------------------------------------------------------------------


def test_registry_lists_every_built_in_task_with_a_one_line_summary():
    assert set(BUILT_IN) <= set(list_tasks())
    for name in list_tasks():
        summary = task_info(name).summary
        assert summary and "\n" not in summary and len(summary) < 100


def test_unknown_task_name_lists_the_available_tasks():
    with pytest.raises(ValueError) as info:
        make_task("sin5O")
    message = str(info.value)
    assert "sin5O" in message and "did you mean 'sin50'" in message
    for name in list_tasks():
        assert name in message


def test_unknown_option_lists_the_task_options():
    with pytest.raises(ValueError, match="scaled") as info:
        make_task("sin50", scald=False)
    assert "no option 'scald' (did you mean 'scaled'?)" in str(info.value)
    with pytest.raises(ValueError, match="image"):
        make_task("digits", flatten=False)


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_n_is_a_value_error(n):
    with pytest.raises(ValueError, match="n must be"):
        make_task("moons", n=n)


def test_bad_seed_and_fractions_are_value_errors():
    with pytest.raises(ValueError, match="seed"):
        make_task("moons", seed=-1)
    with pytest.raises(ValueError, match="fractions"):
        make_task("moons", fractions=(0.5, 0.3, 0.3))
    with pytest.raises(ValueError, match="too few"):
        make_task("moons", n=2)


def test_registering_a_task_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_task("moons")(lambda rng, n=10: None)


# --------------------------------------------------------------------------------------------------
# Every built-in task: shapes, dtypes, splits, determinism
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILT_IN)
def test_shapes_dtypes_and_split_sizes(name):
    task = make_task(name)
    assert task.name == name and task.description
    sizes = [len(task.train), len(task.val), len(task.test)]
    assert sum(sizes) == DEFAULT_N[name]
    assert sizes[1] == sizes[2] == round(0.15 * DEFAULT_N[name])
    for split in (task.train, task.val, task.test):
        assert split.x.dtype == torch.float32
        assert tuple(split.x.shape[1:]) == task.input_shape
        assert torch.isfinite(split.x).all()
        if task.kind == "classification":
            assert task.loss == "cross_entropy" and task.metric_name == "accuracy"
            assert split.y.dtype == torch.int64 and split.y.shape == (len(split),)
            assert 0 <= split.y.min() and split.y.max() < task.output_dim
        else:
            assert task.loss == "mse" and task.metric_name == "mse"
            assert split.y.dtype == torch.float32 and split.y.shape == (len(split), task.output_dim)
    assert repr(task).startswith(f"Task(name={name!r}")


@pytest.mark.parametrize("name", BUILT_IN)
def test_same_seed_same_data_different_seed_different_data(name):
    a = make_task(name, seed=3)
    torch.manual_seed(1234)  # torch's global RNG plays no part
    b = make_task(name, seed=3)
    c = make_task(name, seed=4)
    for split in ("train", "val", "test"):
        assert torch.equal(a.split(split).x, b.split(split).x)
        assert torch.equal(a.split(split).y, b.split(split).y)
    assert not torch.equal(a.train.x, c.train.x)


@pytest.mark.parametrize("name", [n for n in BUILT_IN if n != "digits"])
def test_splits_are_disjoint(name):
    task = make_task(name)
    rows = [{tuple(r) for r in s.x.reshape(len(s), -1).tolist()} for s in (task.train, task.val, task.test)]
    assert sum(len(r) for r in rows) == DEFAULT_N[name]  # rows are distinct...
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])  # ...and in one split


def test_digits_splits_hold_each_image_once():
    from sklearn.datasets import load_digits

    task = make_task("digits")
    ours = torch.cat([all_x(task), all_y(task)[:, None].float()], dim=1).numpy().astype(np.float64)
    bunch = load_digits()
    theirs = np.concatenate([bunch.data / 16.0, bunch.target[:, None]], axis=1)
    assert np.array_equal(sorted_rows(ours), sorted_rows(theirs))
    assert 0.0 <= ours[:, :64].min() and ours[:, :64].max() == 1.0
    assert task.output_dim == 10 and task.input_shape == (64,)


def test_digits_image_option_and_subset():
    task = make_task("digits", image=True, n=100, seed=2)
    assert task.input_shape == (1, 8, 8) and task.train.x.shape[1:] == (1, 8, 8)
    assert sum(len(s) for s in (task.train, task.val, task.test)) == 100
    with pytest.raises(ValueError, match="too many"):
        make_task("digits", n=5000)


def test_custom_fractions():
    task = make_task("moons", n=100, fractions=(0.8, 0.2, 0.0))
    assert (len(task.train), len(task.val), len(task.test)) == (80, 20, 0)


# --------------------------------------------------------------------------------------------------
# The targets are the documented formulas
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scaled", [True, False])
def test_sin50_labels_follow_the_formula(scaled):
    task = make_task("sin50", scaled=scaled, n=500)
    x = all_x(task).double()
    s = x.sum(dim=1) / (math.sqrt(50) if scaled else 1.0)
    k = torch.arange(1, 11, dtype=torch.float64)
    assert torch.equal(all_y(task), torch.sin(k * s[:, None]).argmax(dim=1))
    assert task.input_shape == (50,) and task.output_dim == 10
    assert len(all_y(task).unique()) == 10


def test_teacher_student_target_is_the_teacher_output():
    task = make_task("teacher_student")
    w1, w2 = task.extras["teacher_w1"], task.extras["teacher_w2"]
    assert w1.shape == (10, 10) and w2.shape == (10, 10)
    assert -1 <= w1.min() and w1.max() <= 1 and -1 <= w2.min() and w2.max() <= 1
    assert w1.std() > 0.4  # uniform on [-1, 1] has std 0.577
    for split in (task.train, task.val, task.test):
        x = split.x.double()
        expected = torch.relu(x @ w1.double().T) @ w2.double().T
        torch.testing.assert_close(split.y.double(), expected, rtol=1e-6, atol=1e-5)
    assert (task.input_shape, task.output_dim) == ((10,), 10)


def test_teacher_student_sizes_are_options():
    task = make_task("teacher_student", in_dim=20, hidden=5, out_dim=3, n=100)
    assert task.extras["teacher_w1"].shape == (5, 20) and task.extras["teacher_w2"].shape == (3, 5)
    assert task.input_shape == (20,) and task.output_dim == 3


def test_regression1d_target_is_2_sin_x_plus_x():
    task = make_task("regression1d")
    x = all_x(task).double()
    assert x.shape == (200, 1) and -5 <= x.min() and x.max() <= 5
    torch.testing.assert_close(all_y(task).double(), 2 * torch.sin(x) + x, rtol=1e-6, atol=1e-6)


def test_multisin_target_follows_the_formula():
    task = make_task("multisin", in_dim=3, out_dim=2, n=50)
    x = all_x(task).double()
    expected = torch.stack([sum(torch.sin((i + 1) * x[:, i] + d) for i in range(3)) for d in range(2)], dim=1)
    torch.testing.assert_close(all_y(task).double(), expected, rtol=1e-6, atol=1e-6)


def test_moons_has_two_balanced_classes():
    task = make_task("moons", noise=0.1)
    assert task.output_dim == 2 and task.input_shape == (2,)
    assert torch.bincount(all_y(task)).tolist() == [100, 100]


def test_bars_classes_are_balanced_and_options_are_checked():
    assert torch.bincount(all_y(make_task("bars"))).tolist() == [500] * 4
    task = make_task("bars", n=40, classes=3, size=12)
    assert task.input_shape == (1, 12, 12) and task.output_dim == 3
    assert torch.bincount(all_y(task)).tolist() == [14, 13, 13]
    for option, message in (
        ({"size": 4}, "size must be at least 8"),
        ({"classes": 0}, "classes"),
        ({"noise": -1.0}, "noise"),
    ):
        with pytest.raises(ValueError, match=message):
            make_task("bars", n=20, **option)


def lit_pixels(image: torch.Tensor) -> np.ndarray:
    """(row, column) of the pixels of a noise-free bars image that are on (all others are exactly 0)."""
    assert set(image.unique().tolist()) == {0.0, 1.0}
    return image[0].nonzero().numpy()


def test_bars_draws_one_bar_of_the_class_orientation():
    task = make_task("bars", n=200, noise=0.0, seed=5)
    for x, y in zip(all_x(task), all_y(task).tolist(), strict=True):
        pixels = lit_pixels(x)
        rows, cols = pixels[:, 0], pixels[:, 1]
        assert len(pixels) >= 4  # length >= 16 / 4
        if y == 0:  # horizontal: one row, contiguous columns
            assert len(set(rows)) == 1 and cols.max() - cols.min() + 1 == len(cols)
        elif y == 2:  # vertical
            assert len(set(cols)) == 1 and rows.max() - rows.min() + 1 == len(rows)
        else:  # 45 degrees rises to the right (rows fall as columns grow), 135 degrees falls
            r = np.corrcoef(rows, cols)[0, 1]
            assert (r < -0.8) if y == 1 else (r > 0.8), (y, r)  # a staircase of a few pixels


def test_bars_noise_is_added_to_the_same_bars():
    clean, noisy = make_task("bars", n=300, noise=0.0, seed=2), make_task("bars", n=300, noise=0.3, seed=2)
    assert torch.equal(all_y(clean), all_y(noisy))
    difference = (all_x(noisy) - all_x(clean)).double()
    assert abs(difference.std().item() - 0.3) < 0.01 and abs(difference.mean().item()) < 0.01


def test_a_small_cnn_learns_bars_far_above_chance():
    """specs/cnn_bars.yaml trained 100 Adam steps of 32 samples: test accuracy well above chance (0.25),
    and above a linear model trained the same way (the class is a local pattern at a random place)."""
    import dagrow

    task = make_task("bars", n=1000, seed=0)
    accuracies = {}
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: one thread is faster, and much faster on a loaded machine
    nets = {
        "cnn": dagrow.compile(dagrow.load_spec(SPECS_DIR / "cnn_bars.yaml"), seed=0),
        "linear": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 4)),
    }
    for name, net in nets.items():
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for step in range(100):
            x, y = next(task.batches("train", 32, shuffle=True, seed=step))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        with torch.no_grad():
            accuracies[name] = task.metric(net(task.test.x), task.test.y)
    torch.set_num_threads(threads)
    assert accuracies["cnn"] > 0.6 and accuracies["cnn"] > accuracies["linear"] + 0.2, accuracies


# --------------------------------------------------------------------------------------------------
# Batches and metrics
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 1, 7, 140, 1000])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_sample_once(batch_size, shuffle):
    task = make_task("regression1d")  # x values are distinct, so they identify samples
    batches = list(task.batches("train", batch_size, shuffle=shuffle, seed=5))
    xs = torch.cat([xb for xb, _ in batches])
    ys = torch.cat([yb for _, yb in batches])
    assert xs.shape == task.train.x.shape
    assert torch.equal(xs.flatten().sort().values, task.train.x.flatten().sort().values)
    torch.testing.assert_close(ys, 2 * torch.sin(xs.double()).float() + xs)  # pairs stay together
    expected = [len(task.train)] if batch_size is None else [len(b) for b in task.train.x.split(batch_size)]
    assert [len(xb) for xb, _ in batches] == expected
    if not shuffle:
        assert torch.equal(xs, task.train.x)


def test_batches_shuffle_is_seeded_and_converts_dtype():
    task = make_task("moons")
    first = [xb for xb, _ in task.batches("val", 8, shuffle=True, seed=1)]
    again = [xb for xb, _ in task.batches("val", 8, shuffle=True, seed=1)]
    other = [xb for xb, _ in task.batches("val", 8, shuffle=True, seed=2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    xb, yb = next(task.batches("test", dtype=torch.float64, device="cpu"))
    assert xb.dtype == torch.float64 and yb.dtype == torch.int64  # class indices stay int64
    xb, yb = next(make_task("multisin").batches(dtype=torch.float64))
    assert xb.dtype == yb.dtype == torch.float64
    with pytest.raises(ValueError, match="split"):
        next(task.batches("validation"))
    with pytest.raises(ValueError, match="batch_size"):
        next(task.batches("train", 0))


def test_metric_on_handmade_examples():
    clf = make_task("moons")
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, -1.0], [0.5, 0.4]])
    labels = torch.tensor([0, 1, 1, 1])
    assert clf.metric(logits, labels) == pytest.approx(0.5)
    assert clf.metric(torch.tensor([0, 1, 1, 1]), labels) == pytest.approx(1.0)  # predicted indices
    assert math.isnan(clf.metric(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="does not match"):
        clf.metric(torch.zeros(3, 2), labels)

    reg = make_task("multisin", out_dim=2)
    output = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    assert reg.metric(output, target) == pytest.approx((0 + 4 + 9 + 1) / 4)
    assert reg.metric_name == "mse"
    with pytest.raises(ValueError, match="does not match"):
        reg.metric(output[:, :1], target)


def test_split_checks_lengths_and_has_a_short_repr():
    with pytest.raises(ValueError, match="samples"):
        Split(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    assert repr(Split(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))) == (
        "Split(x=float32[3, 2], y=int64[3])"
    )


# --------------------------------------------------------------------------------------------------
# User data
# --------------------------------------------------------------------------------------------------


def test_npz_round_trip_classification(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 3))
    y = rng.choice([-1, 1, 4], size=60)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    task = load_data(tmp_path / "data.npz", seed=1)
    assert task.kind == "classification" and task.output_dim == 3 and task.input_shape == (3,)
    assert task.name == "data.npz" and task.extras["classes"].tolist() == [-1, 1, 4]
    ours = np.concatenate([all_x(task).numpy(), task.extras["classes"][all_y(task)][:, None].numpy()], axis=1)
    theirs = np.concatenate([x.astype(np.float32), y[:, None]], axis=1)
    assert np.array_equal(sorted_rows(ours), sorted_rows(theirs))
    again = load_data(tmp_path / "data.npz", seed=1)
    assert torch.equal(task.train.x, again.train.x)
    assert not torch.equal(task.train.x, load_data(tmp_path / "data.npz", seed=2).train.x)


def test_npz_round_trip_regression_and_kind_override(tmp_path: Path):
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    y = np.stack([x[:, 0] * 0.5, x[:, 1] ** 2], axis=1)
    np.savez(tmp_path / "reg.npz", x=x, y=y)
    task = load_data(tmp_path / "reg.npz")
    assert task.kind == "regression" and task.output_dim == 2
    order = all_x(task)[:, 0].argsort()
    torch.testing.assert_close(all_x(task)[order], torch.tensor(x, dtype=torch.float32))
    torch.testing.assert_close(all_y(task)[order], torch.tensor(y, dtype=torch.float32))

    np.savez(tmp_path / "labels.npz", x=x, y=np.arange(20) % 2)
    assert load_data(tmp_path / "labels.npz").kind == "classification"
    forced = load_data(tmp_path / "labels.npz", kind="regression")
    assert forced.kind == "regression" and forced.train.y.shape[1] == 1
    np.savez(tmp_path / "floats.npz", x=x, y=(np.arange(20) % 2).astype(float))
    assert load_data(tmp_path / "floats.npz").kind == "regression"
    assert load_data(tmp_path / "floats.npz", kind="classification").output_dim == 2
    np.savez(tmp_path / "named.npz", x=x, labels=np.arange(20) % 2)
    assert load_data(tmp_path / "named.npz", target="labels").kind == "classification"


def test_csv_round_trip_with_header(tmp_path: Path):
    path = tmp_path / "table.csv"
    lines = ["# a comment", "a, b ,label", ""] + [f"{i * 0.5},{-i},{i % 3}" for i in range(30)]
    path.write_text("\n".join(lines) + "\n")
    task = load_data(path)
    assert task.kind == "classification" and task.output_dim == 3 and task.input_shape == (2,)
    assert task.extras["columns"] == ("a", "b", "label") and task.extras["target"] == "label"
    x, y = all_x(task), all_y(task)
    order = x[:, 0].argsort()
    assert torch.equal(x[order, 1], -torch.arange(30, dtype=torch.float32))
    assert torch.equal(y[order], torch.arange(30) % 3)

    by_name = load_data(path, target="a")
    assert by_name.kind == "regression" and by_name.input_shape == (2,)  # 0.5 steps: floats
    by_index = load_data(path, target=0)
    assert torch.equal(by_index.train.y, by_name.train.y)


def test_csv_without_header_semicolons_and_float_target(tmp_path: Path):
    path = tmp_path / "plain.csv"
    path.write_text("".join(f"{i};{2 * i};{i / 4}\n" for i in range(20)))
    task = load_data(path)
    assert task.kind == "regression" and task.input_shape == (2,) and "columns" not in task.extras
    x, y = all_x(task), all_y(task)
    torch.testing.assert_close(y[:, 0], x[:, 0] / 4)
    forced = load_data(path, header=True)
    assert forced.extras["columns"] == ("0", "0", "0.0") and len(all_y(forced)) == 19
    assert load_data(path, target=0).kind == "regression"  # 20 distinct integers in 20 rows
    assert load_data(path, target=0, kind="classification").output_dim == 20


DATA_ERRORS = {
    "missing.npz": (None, "no such file"),
    "missing.csv": (None, "no such file"),
    "data.txt": ("1,2\n", "unknown extension"),
    "garbage.npz": (b"this is not a zip archive", "cannot be read"),
    "no_x.npz": ({"inputs": np.zeros((3, 2)), "y": np.zeros(3)}, "missing array 'x'"),
    "no_y.npz": ({"x": np.zeros((3, 2))}, "missing array 'y'"),
    "lengths.npz": ({"x": np.zeros((3, 2)), "y": np.zeros(4)}, "3 samples"),
    "nan.npz": ({"x": np.array([[0.0], [np.nan], [1.0]]), "y": np.zeros(3)}, "sample 1"),
    "inf.npz": ({"x": np.zeros((3, 1)), "y": np.array([0.0, 1.0, np.inf])}, "NaN or infinite"),
    "strings.npz": ({"x": np.array([["a"], ["b"]]), "y": np.zeros(2)}, "dtype"),
    "single.npz": (np.zeros((3, 2)), "single array"),
    "fields.csv": ("a,b,c\n1,2,3\n4,5\n", ":3: expected 3 fields, found 2"),
    "word.csv": ("1,2,3\n4,five,6\n", ":2: 'five' in column 2 is not a number"),
    "nan.csv": ("a,b\n1,2\n\n3,nan\n", ":4: non-finite value 'nan' in column 2 ('b')"),
    "empty_value.csv": ("a,b\n1,\n", ":2: empty value"),
    "empty.csv": ("", "no data rows"),
    "header_only.csv": ("a,b\n", "no data rows"),
    "one_column.csv": ("1\n2\n", "found 1 column"),
    "few.csv": ("1,2\n", "too few"),
}


def _write(path: Path, content) -> None:
    if content is None:
        return
    if isinstance(content, dict):
        np.savez(path, **content)
    elif isinstance(content, np.ndarray):
        with open(path, "wb") as f:
            np.save(f, content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize("file_name", list(DATA_ERRORS))
def test_data_errors_name_the_file_and_the_problem(tmp_path: Path, file_name):
    content, expected = DATA_ERRORS[file_name]
    path = tmp_path / file_name
    _write(path, content)
    with pytest.raises(DataError) as info:
        load_data(path)
    message = str(info.value)
    assert file_name in message and expected in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("target", "header", "expected"),
    [
        ("lable", None, "no column 'lable' (did you mean 'label'?); columns: a, label"),
        ("label", False, "no header row"),
        (5, None, "out of range"),
    ],
)
def test_csv_target_errors_name_the_file(tmp_path: Path, target, header, expected):
    path = tmp_path / "t.csv"
    path.write_text("a,label\n1,2\n3,4\n5,6\n7,8\n")
    with pytest.raises(DataError, match="t.csv") as info:
        load_data(path, target=target, header=header)
    assert expected in str(info.value)


def test_classification_of_fractional_targets_is_a_data_error(tmp_path: Path):
    np.savez(tmp_path / "frac.npz", x=np.zeros((10, 1)), y=np.linspace(0, 1, 10))
    with pytest.raises(DataError, match=r"frac\.npz.*must be integers"):
        load_data(tmp_path / "frac.npz", kind="classification")


# ---------------------------------------------------------------------------------------------
# a task against a spec
# ---------------------------------------------------------------------------------------------

SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"


def test_fit_task_reshapes_flat_digits_to_the_conv_spec_images():
    from dagrow import load_spec

    flat = make_task("digits")
    task = fit_task(flat, load_spec(SPECS_DIR / "conv_digits.yaml"))
    assert task.input_shape == (1, 8, 8) and task.train.x.shape[1:] == (1, 8, 8)
    assert torch.equal(task.train.x.reshape(len(task.train), -1), flat.train.x)
    assert torch.equal(task.test.y, flat.test.y)
    same = make_task("sin50", n=50)
    assert fit_task(same, load_spec(SPECS_DIR / "mlp_sin50.yaml")) is same


@pytest.mark.parametrize(
    "task, spec, says",
    [
        (
            "regression1d",
            "mlp_sin50",
            "input 'x' has shape [50] but task 'regression1d' gives samples of shape [1]",
        ),
        ("moons", "mlp_sin50", "input 'x' has shape [50] but task 'moons' gives samples of shape [2]"),
        ("sin50", "two_in_two_out", "has 2 inputs and 2 outputs"),
    ],
)
def test_fit_task_names_the_mismatch(task, spec, says):
    from dagrow import load_spec

    with pytest.raises(DataError) as info:
        fit_task(make_task(task, n=40), load_spec(SPECS_DIR / f"{spec}.yaml"))
    assert says in str(info.value)


def test_fit_task_checks_the_output_width():
    from dagrow import load_spec

    spec = load_spec(SPECS_DIR / "mlp_sin50.yaml")  # 10 outputs
    with pytest.raises(DataError, match="output 'out' has width 10 but task 'multisin' has"):
        fit_task(make_task("multisin", n=40, in_dim=50), spec)
