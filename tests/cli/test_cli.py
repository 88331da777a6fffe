"""`bncheck check` and `bncheck vectors`: exit codes, output, round trips."""

import json

import numpy as np
import pytest

from bncheck.cli import main
from bncheck.numerics import make, reference_outputs

from ..conftest import LiveServer
from ..numerics.kernels import backward


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors")
    assert main(["vectors", "--case", "normal", "--case", "mean_offset", "--case", "constant_dy",
                 "--out", str(out)]) == 0
    return out


def _save(tmp_path, **arrays):
    paths = {}
    for name, arr in arrays.items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], arr)
    return paths


def test_vectors_manifest_and_files(vectors):
    manifest = json.loads((vectors / "manifest.json").read_text())
    assert [c["name"] for c in manifest["cases"]] == ["normal", "mean_offset", "constant_dy"]
    case = manifest["cases"][0]
    assert case["files"]["x"]["shape"] == [16, 8, 4, 4]
    assert case["files"]["dgamma"]["shape"] == [8]
    assert set(case["tolerance"]) == {"y", "mean", "invstd", "dx", "dgamma", "dbeta"}
    raw = np.fromfile(vectors / case["files"]["dx"]["bin"], dtype="<f4").reshape(16, 8, 4, 4)
    with np.load(vectors / case["npz"]) as npz:
        assert {npz[k].dtype for k in npz.files} == {np.dtype(np.float32)}  # every tensor in --dtype
        assert np.array_equal(raw, npz["dx"])
        want = reference_outputs(npz["x"], npz["dy"], npz["gamma"], npz["beta"], eps=case["eps"])
        assert np.array_equal(npz["dx"], want["dx"].astype(np.float32))


def test_vectors_progress_goes_to_stderr(tmp_path, capsys):
    assert main(["vectors", "--case", "normal", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "[1/1] normal" in err
    assert "wrote 1 cases" in err


def test_recommended_tolerances_pass_a_correct_kernel_and_fail_a_broken_one(vectors):
    """What a C++ or CUDA test would do with the manifest alone."""
    manifest = json.loads((vectors / "manifest.json").read_text())
    for case in manifest["cases"]:
        with np.load(vectors / case["npz"]) as v:
            arrays = {k: v[k] for k in v.files}
        for bug, should_pass in ((None, True), ("no_mean_term", False)):
            out = backward(arrays["x"], arrays["dy"], arrays["gamma"], arrays["beta"], eps=case["eps"], bug=bug)
            ok = all(np.allclose(out[k].astype(np.float64), arrays[k], **case["tolerance"][k])
                     for k in ("dx", "dgamma", "dbeta", "y", "mean", "invstd"))
            if bug and case["name"] != "normal":
                # constant_dy: the mean term is the whole of dx. mean_offset (|mean|/std = 1e4): a
                # float32 kernel's own error is within 10x of this bug's, and the folded tolerance
                # admits both -- bncheck check, with per-element scales, is the sharper tool there.
                continue
            assert ok is should_pass, (case["name"], bug)


def test_replaying_a_vector_through_check_passes(vectors, capsys):
    npz = str(vectors / "normal" / "normal.npz")
    assert main(["check", "--npz", npz, "--candidate-npz", npz]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bncheck: PASSED")
    assert "candidate          passed" in out


def test_replaying_raw_bin_files(vectors, capsys):
    d = vectors / "normal"
    args = ["check", "--x", str(d / "x.bin"), "--dy", str(d / "dy.bin"), "--gamma", str(d / "gamma.bin:f32"),
            "--beta", str(d / "beta.bin:FP32"), "--dx", str(d / "dx.bin"), "--dgamma", str(d / "dgamma.bin"),
            "--shape", "[16, 8, 4, 4]", "--candidate-bin-dtype", "F32"]
    assert main(args) == 0, capsys.readouterr().err


def test_a_broken_kernel_fails_with_exit_1_and_says_where(tmp_path, capsys):
    case = make("normal", shape=(32, 6)).cast("float32")
    out = backward(case.x, case.dy, case.gamma, case.beta, eps=case.eps, bug="stale_rows")
    p = _save(tmp_path, x=case.x, dy=case.dy, gamma=case.gamma, beta=case.beta, dx=out["dx"])
    code = main(["check", "--x", str(p["x"]), "--dy", str(p["dy"]), "--gamma", str(p["gamma"]), "--beta",
                 str(p["beta"]), "--dx", str(p["dx"])])
    text = capsys.readouterr().out
    assert code == 1
    assert text.startswith("bncheck: FAILED")
    assert "dx      FAIL" in text
    assert "mismatched" in text
    assert "6 channels failed: 0-5; worst (mismatched)" in text  # stale rows hit every channel


def test_json_output(tmp_path, capsys):
    case = make("normal", shape=(8, 3))
    p = _save(tmp_path, x=case.x, dy=case.dy)
    assert main(["check", "--x", str(p["x"]), "--dy", str(p["dy"]), "--json", "--variant", "all"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is True
    assert set(doc["checks"]["variants"]["variants"]) == {
        "staged", "kevin", "rocking", "qianfeng"}


def test_out_writes_gradients_and_reference(tmp_path):
    case = make("normal", shape=(8, 3))
    p = _save(tmp_path, x=case.x.astype(np.float16), dy=case.dy.astype(np.float16))
    assert main(["check", "--x", str(p["x"]), "--dy", str(p["dy"]), "--out", str(tmp_path / "o")]) == 0
    assert np.load(tmp_path / "o" / "dx.npy").dtype == np.float16
    assert np.load(tmp_path / "o" / "reference_dx.npy").dtype == np.float64


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["check", "--x", "nope.npy", "--dy", "nope.npy"], "no such file"),
        (["check", "--case", "normal", "--variant", "fastest"], "variant"),
        (["check", "--case", "normal", "--eps", "-1"], "eps"),
        (["check", "--case", "nothing"], "invalid choice: 'nothing'"),
        (["check"], "missing x"),
        (["check", "--case", "normal", "--shape", "a,b"], "--shape"),
        (["vectors", "--case", "nothing"], "unknown case"),
    ],
)
def test_bad_usage_exits_2(args, words, capsys):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert words in err


def test_raw_file_of_the_wrong_size_exits_2(tmp_path, capsys):
    (tmp_path / "x.bin").write_bytes(b"\0" * 12)
    assert main(["check", "--x", str(tmp_path / "x.bin"), "--dy", str(tmp_path / "x.bin"), "--shape", "2,2"]) == 2
    assert "holds 12 bytes but shape [2, 2] of float32 needs 16" in capsys.readouterr().err


def test_argparse_usage_errors_exit_2(capsys):
    assert main(["check", "--fd", "exact"]) == 2
    assert "invalid choice: 'exact'" in capsys.readouterr().err


def test_version_and_help_with_examples_and_exit_codes(capsys):
    from bncheck import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"bncheck {__version__}"
    assert main(["check", "--help"]) == 0
    text = capsys.readouterr().out
    for words in ("examples:", "exit codes:", "3  the server could not be reached", "--bin-dtype f16",
                  "mean_offset", "qianfeng", "default 1e-4", "seconds to wait"):
        assert words in text, words


@pytest.mark.parametrize("shape", ["16,8,4,4", "16x8x4x4", "[16, 8, 4, 4]", "(16, 8, 4, 4)", "(16,8,4,4)"])
@pytest.mark.parametrize(("flag_dtype", "suffix"), [("f32", "f32"), ("FP32", "float32"), ("Float32", "F32"),
                                                    ("float", "fp32")])
def test_shapes_and_dtypes_in_every_spelling_users_bring(vectors, capsys, shape, flag_dtype, suffix):
    d = vectors / "normal"
    args = ["check", "--x", str(d / "x.bin"), "--dy", str(d / "dy.bin"), "--gamma", str(d / f"gamma.bin:{suffix}"),
            "--dx", str(d / "dx.bin"), "--shape", shape, "--bin-dtype", flag_dtype, "--fd", "none"]
    assert main(args) == 0, capsys.readouterr().err


@pytest.mark.parametrize(("name", "want"), [("f16", "float16"), ("half", "float16"), ("FP16", "float16"),
                                            ("bf16", "bfloat16"), ("BF16", "bfloat16"), ("bfloat16", "bfloat16"),
                                            ("f64", "float64"), ("double", "float64"), ("F64", "float64")])
def test_dtype_names_other_stacks_write(name, want):
    from bncheck.numerics.dtypes import resolve

    assert resolve(name).name == want


def test_a_bad_dtype_names_the_file_or_flag_that_carried_it(vectors, capsys):
    d = vectors / "normal"
    base = ["check", "--x", str(d / "x.bin"), "--dy", str(d / "dy.bin"), "--shape", "16,8,4,4"]
    assert main([*base, "--dgamma", str(d / "dgamma.bin:f8")]) == 2
    err = capsys.readouterr().err
    assert "dgamma.bin:f8: unsupported dtype 'f8'" in err
    assert "--bin-dtype" not in err
    assert main([*base, "--bin-dtype", "int8"]) == 2
    assert "--bin-dtype int8: unsupported dtype" in capsys.readouterr().err


def test_a_size_mismatch_suggests_the_dtype_override(vectors, capsys):
    d = vectors / "normal"
    args = ["check", "--x", str(d / "x.bin"), "--dy", str(d / "dy.bin"), "--shape", "16,8,4,4", "--bin-dtype", "f16"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "x.bin: holds 8,192 bytes but shape [16, 8, 4, 4] of float16 needs 4,096" in err
    assert f"say so: {d / 'x.bin'}:float32" in err


def test_against_a_server(tmp_path, capsys):
    case = make("heavy_tails", shape=(64, 4))
    p = _save(tmp_path, x=case.x, dy=case.dy)
    with LiveServer() as server:
        code = main(["check", "--x", str(p["x"]), "--dy", str(p["dy"]), "--server", server.url, "--fd", "brute"])
        bad = main(["check", "--x", str(p["x"]), "--dy", str(p["dy"]), "--server", server.url, "--gamma",
                    str(p["x"])])
    captured = capsys.readouterr()
    assert code == 0
    assert "brute" in captured.out
    assert bad == 2
    assert "422" in captured.err
    assert "gamma" in captured.err


def test_an_unreachable_server_exits_3_not_2(tmp_path, capsys):
    """CI must tell infrastructure from a mistake."""
    case = make("normal", shape=(8, 3))
    p = _save(tmp_path, x=case.x, dy=case.dy)
    assert main(["check", "--x", str(p["x"]), "--dy", str(p["dy"]), "--server", "http://127.0.0.1:9"]) == 3
    err = capsys.readouterr().err
    assert "could not reach" in err
    assert "bncheck serve" in err


def test_a_tolerance_for_one_tensor_leaves_the_others_calibrated(tmp_path, capsys):
    case = make("normal", shape=(32, 6)).cast("float32")
    out = backward(case.x, case.dy, case.gamma, case.beta, eps=case.eps, bug="stale_rows")
    p = _save(tmp_path, x=case.x, dy=case.dy, gamma=case.gamma, beta=case.beta, dx=out["dx"],
              dgamma=out["dgamma"])
    args = ["check", "--x", str(p["x"]), "--dy", str(p["dy"]), "--gamma", str(p["gamma"]), "--beta",
            str(p["beta"]), "--dx", str(p["dx"]), "--dgamma", str(p["dgamma"]), "--fd", "none", "--json"]
    code = main([*args, "--tolerance", "dx=0,100"])  # the stale rows are within an atol of 100
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    tensors = report["checks"]["candidate"]
    assert tensors["dx"]["tolerance"]["basis"] == "user"
    assert tensors["dgamma"]["tolerance"]["basis"] == "calibrated"
    assert main([*args, "--tolerance", "dx=0"]) == 2
    assert "TENSOR=RTOL,ATOL" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["in-process", "server"])
def test_html_report(tmp_path, capsys, where):
    """--html writes one self-contained file whose per-channel marks fail where the bug is."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 8, 3, 3)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = backward(x, dy, np.ones(8, np.float32), np.zeros(8, np.float32), eps=1e-5)["dx"]
    dx[:, 5] *= 1.01  # channel 5 off by 1%
    p = _save(tmp_path, x=x, dy=dy, dx=dx)
    out = tmp_path / "report.html"
    args = ["check", "--x", str(p["x"]), "--dy", str(p["dy"]), "--dx", str(p["dx"]), "--html", str(out),
            "--fd", "none"]
    if where == "server":
        with LiveServer() as server:
            code = main([*args, "--server", server.url])
    else:
        code = main(args)
    assert code == 1
    assert f"wrote the HTML report to {out}" in capsys.readouterr().err
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "FAILED" in page
    assert "<script" not in page
    assert "http://" not in page
    assert "https://" not in page
    assert page.count("class='mark fail'") == 1
    assert "class='mark fail' data-channel='5'" in page


def test_html_report_to_a_folder_that_is_not_there(tmp_path, capsys):
    case = make("normal", shape=(16, 4))
    p = _save(tmp_path, x=case.x, dy=case.dy)
    code = main(["check", "--x", str(p["x"]), "--dy", str(p["dy"]), "--fd", "none",
                 "--html", str(tmp_path / "missing" / "r.html")])
    assert code == 2
    assert "--html" in capsys.readouterr().err


BLOCKED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"fastapi", "starlette", "uvicorn", "pydantic", "orjson", "prometheus_client"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from bncheck.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_in_process_checks_need_no_server_packages(tmp_path):
    """pip install . (no [server] extra): the in-process check calls the numerics directly."""
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-c", BLOCKED, *args], capture_output=True, text=True, timeout=120,
                              check=False)

    r = cli("check", "--case", "normal", "--shape", "16,4", "--fd", "brute", "--json",
            "--html", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["passed"] is True
    assert doc["checks"]["finite_difference"]["method"] == "brute"
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    bad = cli("check", "--case", "normal", "--shape", "16,4", "--channel-axis", "5")
    assert bad.returncode == 2
    assert "channel_axis" in bad.stderr
    serve = cli("serve")
    assert serve.returncode == 2
    assert "pip install 'bncheck[server]'" in serve.stderr
