"""Bad input raises InputError naming the argument and the numbers."""

import numpy as np
import pytest

from bncheck.numerics import FDOptions, InputError, check

X = np.arange(24.0).reshape(4, 6)
DY = np.ones((4, 6))


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"x": np.ones(5)}, "x", "at least 2 dimensions"),
        ({"x": np.ones((0, 3)), "dy": np.ones((0, 3))}, "x", "dimension 0"),
        ({"dy": np.ones((4, 5))}, "dy", "[4, 5]"),
        ({"channel_axis": 2}, "channel_axis", "outside [-2, 1]"),
        ({"channel_axis": -3}, "channel_axis", "-3"),
        ({"eps": 0.0}, "eps", "> 0"),
        ({"eps": -1e-5}, "eps", "> 0"),
        ({"eps": float("nan")}, "eps", "finite"),
        ({"gamma": np.ones(5)}, "gamma", "6 channels"),
        ({"beta": np.ones((6, 1))}, "beta", "[6, 1]"),
        ({"variant": "fastest"}, "variant", "staged, kevin, rocking, qianfeng"),
        ({"dtype": "float8"}, "dtype", "FP16"),
        ({"accum_dtype": "int8"}, "accum_dtype", "unsupported"),
        ({"dtype": "float32", "accum_dtype": "float16"}, "accum_dtype", "float16 for float32"),
        ({"dtype": "float64", "accum_dtype": "float32"}, "accum_dtype", "less precise"),
        ({"dtype": "float16", "accum_dtype": "bfloat16"}, "accum_dtype", "bfloat16"),
        ({"training": False}, "running_mean", "required"),
        ({"training": False, "running_mean": np.zeros(6)}, "running_var", "required"),
        ({"training": False, "running_mean": np.zeros(6), "running_var": -np.ones(6)}, "running_var", "negative"),
        ({"running_mean": np.zeros(6)}, "running_mean", "inference"),
        ({"saved_mean": np.zeros(6)}, "saved_invstd", "together"),
        ({"saved_mean": np.zeros(6), "saved_invstd": np.zeros(6)}, "saved_invstd", "> 0"),
        ({"saved_mean": np.zeros(5), "saved_invstd": np.ones(5)}, "saved_mean", "6 channels"),
        ({"candidate": {"dx": np.ones((4, 5))}}, "candidate.dx", "expected [4, 6]"),
        ({"candidate": {"dgamma": np.ones(4)}}, "candidate.dgamma", "expected [6]"),
        ({"candidate": {"dz": np.ones(6)}}, "candidate.dz", "unknown"),
        ({"x": np.array([[1.0, np.nan], [np.inf, 2.0]]), "dy": np.ones((2, 2))}, "x", "2 non-finite values"),
        ({"dy": np.full((4, 6), np.inf)}, "dy", "24 non-finite"),
        ({"x": X * 1e4, "dtype": "float16"}, "x", "65504"),
        ({"x": np.array([["a", "b"], ["c", "d"]]), "dy": np.ones((2, 2))}, "x", "dtype"),
        ({"x": np.ones((2, 2), dtype=bool), "dy": np.ones((2, 2))}, "x", "dtype"),
        ({"finite_difference": FDOptions("exact")}, "finite_difference.method", "stats"),
        ({"finite_difference": FDOptions(step=0.5)}, "finite_difference.step", "> 0 and <= 0.1"),
        ({"finite_difference": FDOptions(samples=0)}, "finite_difference.samples", ">= 1 and <= 1,048,576"),
        ({"finite_difference": FDOptions(directions=0)}, "finite_difference.directions", ">= 1 and <= 256"),
        ({"device": "tpu"}, "device", "cpu, gpu, auto"),
    ],
)
def test_bad_input_names_the_field(kwargs, field, words):
    args = {"x": X, "dy": DY, **kwargs}
    with pytest.raises(InputError) as info:
        check(args.pop("x"), args.pop("dy"), **args)
    assert info.value.field == field
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)


def test_first_non_finite_index_is_named():
    x = np.zeros((3, 4))
    x[2, 1] = np.nan
    with pytest.raises(InputError, match=r"first at index \[2, 1\]"):
        check(x, np.ones((3, 4)))


def test_integer_inputs_are_numbers():
    r = check(np.arange(12).reshape(3, 4), np.ones((3, 4), dtype=np.int64))
    assert r.dtype == "float32"


def test_check_takes_the_request_definitions_tensors_and_options():
    """check()'s tensors are request.INPUT_NAMES, in order; its options are CheckOptions' fields."""
    import inspect

    from bncheck.numerics import INPUT_NAMES, check
    from bncheck.numerics.errors import InputError

    params = list(inspect.signature(check).parameters)
    assert tuple(params[:len(INPUT_NAMES)]) == INPUT_NAMES
    assert params[len(INPUT_NAMES):] == ["candidate", "limits", "options"]
    x = np.arange(8.0).reshape(4, 2)
    with pytest.raises(InputError, match="unknown option; check\\(\\) takes variant, dtype") as info:
        check(x, x, epsilon=1e-3)
    assert info.value.field == "epsilon"
