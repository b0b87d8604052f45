"""Mutation testing of the core modules: mutmut's own mutation operators, our own runner.

For each core module, every mutant mutmut 3 would make (its operators, its skip rules: only
code inside functions and methods, not decorated functions or annotations) is listed in line
order; a systematic sample of ``--sample`` of them, evenly spread, is run against the test
files that exercise that module (``TESTS``), one file at a time with ``pytest -x`` until one
fails. A mutant is killed when a test fails, errors or times out, and survives when they all
pass; a test that fails without a mutant is named and left out. Survivors listed in
tests/mutation_equivalents.txt (``file | function | before => after | why``) count as
equivalent. Prints killed / survived per module and each survivor as file:line and the change.

Why not ``mutmut run``: it mutates the whole package, maps tests by first running the whole
suite, and runs every mutant against every test that touches the function; here each module
has its own short list of test files, and a sample keeps a run under 20 minutes on 2 cores.

Mutants are written only into throw-away copies of src/ and tests/ (one per job), never into
the working tree, so tests run by others meanwhile see the real modules; the script checks
that the working tree's core modules are unchanged at the end. Each mutant runs in a child
forked from a parent that has already imported torch, so a mutant costs its tests, not an
interpreter start.

    python scripts/mutation.py [--sample N] [--jobs J] [--line L ...] [module.py ...]
    (--sample 0: every mutant; --line: only those on line L, e.g. to rerun the survivors)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path("src/margin_softmax")
EQUIVALENTS = ROOT / "tests/mutation_equivalents.txt"

# module -> the test files that exercise it, the fastest and most exact first (-x stops there)
TESTS = {
    "margins.py": ["test_margins_exact.py", "test_functional.py", "test_heads.py",
                   "test_bad_inputs.py"],
    "reference.py": ["test_reference_exact.py", "test_reference.py"],
    "numerics.py": ["test_functional_exact.py", "test_functional.py", "test_heads.py"],
    "functional.py": ["test_functional_exact.py", "test_functional.py", "test_heads.py",
                      "test_bad_inputs.py"],
    "metrics.py": ["test_metrics_exact.py", "test_metrics.py", "test_metrics_params.py"],
    "validation.py": ["test_validation_exact.py", "test_bad_inputs.py", "test_heads.py",
                      "test_functional.py"],
    "scoring.py": ["test_scoring_exact.py", "test_scoring.py"],
}
# imported once in the parent so that each forked mutant run starts with them loaded
PRELOAD = ["numpy", "torch", "pytest", "hypothesis", "scipy.stats", "sklearn.metrics",
           "pytorch_metric_learning.losses", "triton"]


@dataclass
class Mutant:
    module: str  # "margins.py"
    line: int  # 1-based line of the mutated node in the original file
    function: str  # "Margin._angular"
    before: str  # the changed source line(s), stripped
    after: str
    source: str  # the whole mutated file

    def key(self) -> tuple[str, str, str, str]:
        return (self.module, self.function, self.before, self.after)


def mutants_of(module: str) -> list[Mutant]:
    """Every mutant mutmut 3 makes of src/margin_softmax/<module>, in line order."""
    import libcst as cst
    from libcst.metadata import MetadataWrapper, PositionProvider
    from mutmut.mutation.file_mutation import create_mutations

    path = ROOT / PACKAGE / module
    code = path.read_text()
    tree, mutations, _, _ = create_mutations(str(path), code)
    positions = MetadataWrapper(tree, unsafe_skip_copy=True).resolve(PositionProvider)
    owner = {}  # FunctionDef -> "Class.method" or "function"
    for statement in tree.body:
        if isinstance(statement, cst.FunctionDef):
            owner[statement] = statement.name.value
        elif isinstance(statement, cst.ClassDef) and isinstance(statement.body, cst.IndentedBlock):
            for method in statement.body.body:
                if isinstance(method, cst.FunctionDef):
                    owner[method] = f"{statement.name.value}.{method.name.value}"
    old_lines = code.splitlines()
    found = []
    for mutation in mutations:
        if mutation.contained_by_top_level_function not in owner:  # mutmut only mutates these
            continue
        source = tree.deep_replace(mutation.original_node, mutation.mutated_node).code
        before, after = changed_lines(old_lines, source.splitlines())
        found.append(Mutant(module, positions[mutation.original_node].start.line,
                            owner[mutation.contained_by_top_level_function], before, after,
                            source))
    found.sort(key=lambda m: m.line)  # stable: mutmut's order within a line
    return found


def changed_lines(old: list[str], new: list[str]) -> tuple[str, str]:
    """The lines that differ between two versions of a file, each side joined by spaces."""
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    end = 0
    while end < min(len(old), len(new)) - start and old[-1 - end] == new[-1 - end]:
        end += 1
    return (" ".join(line.strip() for line in old[start:len(old) - end]),
            " ".join(line.strip() for line in new[start:len(new) - end]))


def systematic_sample(mutants: list[Mutant], size: int) -> list[Mutant]:
    """``size`` mutants spread evenly over the list (all of them for size 0 or >= len)."""
    if size <= 0 or size >= len(mutants):
        return mutants
    return [mutants[i * len(mutants) // size] for i in range(size)]


def read_equivalents(path: Path = EQUIVALENTS) -> dict[tuple[str, str, str, str], str]:
    """``file | function | before => after | why`` lines -> why ('#' lines are comments)."""
    equivalents = {}
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip() or text.startswith("#"):
            continue
        module, _, rest = text.partition(" | ")
        function, _, rest = rest.partition(" | ")
        change, _, why = rest.rpartition(" | ")
        before, arrow, after = change.partition(" => ")
        if not (arrow and why.strip()):
            raise SystemExit(f"{path}:{number}: expected 'file | function | before => after "
                             f"| why', got {text!r}")
        key = (module.strip(), function.strip(), before.strip(), after.strip())
        equivalents[key] = why.strip()
    return equivalents


def make_copies(jobs: int) -> list[Path]:
    """``jobs`` throw-away copies of src/ and tests/ (and pyproject.toml for pytest's config)."""
    copies = []
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for _ in range(jobs):
        copy = Path(tempfile.mkdtemp(prefix="mutation-"))
        shutil.copytree(ROOT / "src", copy / "src", ignore=ignore)
        shutil.copytree(ROOT / "tests", copy / "tests", ignore=ignore)
        shutil.copy2(ROOT / "pyproject.toml", copy / "pyproject.toml")
        copies.append(copy)
    return copies


FAILING = "failing-without-a-mutant.txt"  # the baseline's failing tests, in each copy


class FailedTests:
    """A pytest plugin that collects the node ids of the tests that fail."""

    def __init__(self) -> None:
        self.node_ids: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.node_ids.append(report.nodeid)


def start_tests(copy: Path, module: str, skip: list[str], baseline: bool = False) -> int:
    """Fork a child that runs the module's test files in ``copy`` but the tests in ``skip``,
    each file with pytest -x until one fails; its pid. The baseline runs every test and writes
    the failing ones to ``copy / FAILING``."""
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: never returns
        os.setpgid(0, 0)  # its own group, so a timeout kills what it started too
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.chdir(copy)
        sys.dont_write_bytecode = True  # a stale .pyc of another mutant of the same size
        sys.path.insert(0, str(copy / "src"))
        import pytest

        failed = FailedTests()
        options = ["-q", "-p", "no:cacheprovider", *(f"--deselect={test}" for test in skip)]
        code = 0
        for name in TESTS[module]:  # one file at a time: most mutants die in the first
            if (copy / "tests" / name).exists() and (code == 0 or baseline):
                tests = [f"tests/{name}", *options] + ([] if baseline else ["-x"])
                code = int(pytest.main(tests, plugins=[failed]))
        if baseline:
            (copy / FAILING).write_text("".join(f"{test}\n" for test in failed.node_ids))
        os._exit(code)
    except BaseException:
        os._exit(3)


def run_mutants(
    mutants: list[Mutant], copies: list[Path], limit: float, skip: list[str]
) -> dict[int, str]:
    """index in ``mutants`` -> "killed", "survived" or "timeout", running len(copies) at once.
    Each copy's module is put back as it was after every mutant."""
    pending = list(range(len(mutants)))
    free = list(copies)
    running: dict[int, tuple[int, Path, float]] = {}  # pid -> (index, copy, start)
    outcome = {}
    try:
        while pending or running:
            while pending and free:
                index, copy = pending.pop(0), free.pop()
                (copy / PACKAGE / mutants[index].module).write_text(mutants[index].source)
                pid = start_tests(copy, mutants[index].module, skip)
                running[pid] = (index, copy, time.time())
            time.sleep(0.05)
            for pid, (index, copy, start) in list(running.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done and time.time() - start < limit:
                    continue
                if not done:
                    os.killpg(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    outcome[index] = "timeout"
                else:
                    code = os.waitstatus_to_exitcode(status)
                    outcome[index] = "survived" if code == 0 else "killed"
                del running[pid]
                restore(copy, mutants[index].module)
                free.append(copy)
    finally:
        for pid, (index, copy, _) in running.items():
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            restore(copy, mutants[index].module)
    return outcome


def restore(copy: Path, module: str) -> None:
    shutil.copy2(ROOT / PACKAGE / module, copy / PACKAGE / module)


def baseline(module: str, copy: Path) -> tuple[float, list[str]]:
    """Seconds the module's tests take unmutated, and the tests that fail even so (every
    mutant run leaves them out; they are printed, as they cannot kill a mutant)."""
    (copy / FAILING).unlink(missing_ok=True)
    start = time.time()
    os.waitpid(start_tests(copy, module, [], baseline=True), 0)
    seconds = time.time() - start
    failing = (copy / FAILING).read_text().split() if (copy / FAILING).exists() else None
    if failing is None:
        raise SystemExit(f"{module}: the tests did not run; try: pytest "
                         + " ".join(f"tests/{name}" for name in TESTS[module]))
    for test in failing:
        print(f"{module}: {test} fails without a mutant; left out", flush=True)
    return seconds, failing


def fingerprint() -> dict[str, str]:
    return {name: hashlib.sha256((ROOT / PACKAGE / name).read_bytes()).hexdigest()
            for name in TESTS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="module.py",
                        help=f"some of {', '.join(TESTS)} (default: all)")
    parser.add_argument("--sample", type=int, default=60,
                        help="mutants per module, evenly spread by line; 0 runs all")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once")
    parser.add_argument("--line", type=int, action="append", default=[],
                        help="only the mutants on this line (repeatable), e.g. to rerun survivors")
    args = parser.parse_args(argv)
    for module in args.modules:
        if module not in TESTS:
            parser.error(f"unknown module {module!r}; choose from {', '.join(TESTS)}")
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    equivalents = read_equivalents()
    before = fingerprint()
    copies = make_copies(max(1, args.jobs))
    rows = []
    try:
        for module in args.modules or list(TESTS):
            everything = mutants_of(module)
            if args.line:
                everything = [m for m in everything if m.line in args.line]
            sample = systematic_sample(everything, args.sample)
            if not sample:
                print(f"{module}: no mutants on lines {args.line}")
                continue
            seconds, failing = baseline(module, copies[0])
            start = time.time()
            outcome = run_mutants(sample, copies, 3 * seconds + 10, failing)
            survivors = [m for i, m in enumerate(sample) if outcome[i] == "survived"]
            equivalent = [m for m in survivors if m.key() in equivalents]
            killed = len(sample) - len(survivors)
            score = 100 * (killed + len(equivalent)) / len(sample)
            rows.append((module, len(everything), len(sample), killed, len(survivors),
                         len(equivalent), score))
            print(f"{module}: {len(sample)} of {len(everything)} mutants, killed {killed} "
                  f"(timeout {list(outcome.values()).count('timeout')}), survived "
                  f"{len(survivors)} ({len(equivalent)} listed equivalent), "
                  f"score {score:.1f}%, {time.time() - start:.0f} s", flush=True)
            for m in survivors:
                mark = "  (equivalent)" if m.key() in equivalents else ""
                print(f"  {PACKAGE / m.module}:{m.line} in {m.function}: {m.before} => "
                      f"{m.after}{mark}", flush=True)
    finally:
        for copy in copies:
            shutil.rmtree(copy, ignore_errors=True)
    if fingerprint() != before:
        print("the working tree's core modules changed during the run (another editor?)")
    print("\nmodule | mutants | sampled | killed | survived | equivalent | score")
    for module, total, sampled, killed, survived, equivalent, score in rows:
        print(f"{module} | {total} | {sampled} | {killed} | {survived} | {equivalent} | "
              f"{score:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
