"""Import hygiene: the NumPy reference never pulls in torch, the package never pulls in
triton, the command line's help needs no torch, and every public name resolves."""

import subprocess
import sys

import pytest

import margin_softmax as ms


def modules_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_reference_imports_numpy_only():
    loaded = modules_after("import margin_softmax.reference")
    assert "numpy" in loaded and "torch" not in loaded


def test_package_does_not_import_triton():
    loaded = modules_after("import margin_softmax as ms; ms.ArcFace; ms.margin_cross_entropy")
    assert "torch" in loaded and "triton" not in loaded


def test_every_public_name_resolves():
    for name in ms.__all__:
        assert getattr(ms, name) is not None, name
    assert ms.AAMSoftmax is ms.ArcFace and ms.AMSoftmax is ms.CosFace


def test_dir_lists_each_public_name_once_and_no_helpers():
    assert ms.ArcFace is ms.AAMSoftmax  # names already used were listed a second time
    names = dir(ms)
    assert len(names) == len(set(names))
    assert set(names) == {*ms.__all__, "__version__"}


@pytest.mark.parametrize("argv", [["--help"], ["compare", "--help"], ["train", "--help"],
                                  ["eval", "--help"]])
def test_help_does_not_import_torch(argv):
    """torch takes seconds to import; the help must not wait for it."""
    loaded = modules_after(
        "import contextlib, io\nfrom margin_softmax.cli.main import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main({argv!r})"
    )
    assert "margin_softmax.cli.main" in loaded and "torch" not in loaded
