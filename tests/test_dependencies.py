"""What the install declares: CI checks that every package src imports is declared (deptry);
the library needs numpy and torch only and works with the cli extra's packages impossible to
import, while the command line names the missing package of that extra."""

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPTRY = Path(sys.executable).with_name("deptry")


def declared() -> dict[str | None, set[str]]:
    """The installed margin-softmax's requirements: extra name (None: always) -> packages."""
    extras: dict[str | None, set[str]] = {}
    for requirement in importlib.metadata.requires("margin-softmax") or []:
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group().lower()
        extra = re.search(r'extra == "([^"]+)"', requirement)
        extras.setdefault(extra and extra.group(1), set()).add(name)
    return extras


def cli_extra_modules() -> set[str]:
    """The top-level modules of the cli extra's packages (pillow -> PIL, ...)."""
    packages = declared().get("cli", set())
    return {module for module, dists in importlib.metadata.packages_distributions().items()
            if any(d.lower() in packages for d in dists)}


def without(modules: set[str]) -> str:
    """Code for a finder ahead of all others that makes ``modules`` impossible to import."""
    return f"""
import sys
BLOCKED = {sorted(modules)!r}
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Blocked())
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=120)


def test_make_test_runs_deptry_on_src():
    recipe = re.search(r"^test:\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe and "\t.venv/bin/deptry src\n" in recipe.group(1)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def deptry(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([DEPTRY, "src", "--config", config], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_deptry_passes_and_fails_on_an_import_that_is_not_declared(tmp_path):
    assert deptry(ROOT / "pyproject.toml").returncode == 0
    config = (ROOT / "pyproject.toml").read_text()
    assert '  "pillow>=9",\n' in config  # cli/inputs.py imports PIL; matplotlib also brings it
    (tmp_path / "pyproject.toml").write_text(config.replace('  "pillow>=9",\n', ""))
    result = deptry(tmp_path / "pyproject.toml")
    assert result.returncode == 1 and "DEP003 'PIL' imported but it is a transitive" in \
        re.sub(r"\x1b\[[0-9;]*m", "", result.stderr + result.stdout)


def test_the_library_needs_numpy_and_torch_and_the_cli_extra_the_rest():
    assert declared()[None] == {"numpy", "torch"}
    assert {"matplotlib", "PIL", "scipy", "sklearn", "tqdm"} <= cli_extra_modules()


def test_the_library_trains_a_head_without_the_cli_extra():
    result = run_python(without(cli_extra_modules()) + """
import torch
import margin_softmax as ms
from margin_softmax import distributed, metrics, reference, score_norm, scoring
head = ms.ArcFace(8, 4, margin=0.2, scale=30.0)
x = torch.randn(6, 8, requires_grad=True)
loss = head(x, torch.tensor([0, 1, 2, 3, 0, 1]))
loss.backward()
print(float(loss), bool(x.grad.abs().sum() > 0), sorted(set(BLOCKED) & set(sys.modules)))
""")
    assert result.returncode == 0, result.stderr
    loss, has_grad, loaded = result.stdout.split(maxsplit=2)
    assert float(loss) > 0 and has_grad == "True" and loaded.strip() == "[]"


def test_the_command_line_names_the_missing_package_of_the_cli_extra(tmp_path):
    code = without(cli_extra_modules()) + "from margin_softmax.cli.main import main\n" \
        "sys.exit(main())"
    assert run_python(code, "data", str(tmp_path)).returncode == 0  # numpy only
    result = run_python(code, "train", str(tmp_path / "train.npz"), "--epochs", "1")
    assert result.returncode == 1
    assert result.stderr == (
        "margin-softmax train: error: this command needs the package 'tqdm', which is not "
        "installed; install the command line's dependencies with: "
        "pip install 'margin-softmax[cli]'\n")
