"""The benchmark scripts still run end to end (a smoke run: tiny sizes, few repeats)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from regopt.optim import fast

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module                  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def section(text: str, marker: str) -> list[str]:
    """The lines between a benchmark's markers (each pair present exactly once)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    assert text.count(start) == 1 and text.count(end) == 1
    return text[text.index(start):text.index(end)].splitlines()


def test_bench_optim_writes_its_section_and_keeps_the_rest(tmp_path):
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("# Benchmarks\n\nhand-written text\n")
    bench = load("bench_optim")
    assert bench.main(["--sizes", "3x1000", "--rules", "adam", "rmsprop", "--repeats", "2",
                       "--markdown", str(markdown)]) == 0
    text = markdown.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written text\n")
    reductions = section(text, "bench_optim_reductions")
    assert [row.split(" | ")[1] for row in reductions if row.startswith("| 3x1000 |")] == [
        "torch _foreach_norm (clip_grad_norm_)", "torch dot (BLAS)",
        "regopt compiled, one stream", f"regopt compiled, {fast.READ_STREAMS} streams"]
    rows = [line for line in section(text, "bench_optim") if line.startswith("| 3x1000 |")]
    assert [row.split(" | ")[1] for row in rows[:2]] == ["adam", "rmsprop"]
    assert "(torch)" in rows[0] and "(compiled)" in rows[1]     # the engine that ran each
    assert len(rows) == 3                                       # + the regularized step
    first = text
    assert bench.main(["--sizes", "3x1000", "--rules", "sgd", "--repeats", "2",
                       "--markdown", str(markdown)]) == 0        # replaces its section
    text = markdown.read_text()
    assert "| 3x1000 | sgd |" in "\n".join(section(text, "bench_optim"))
    assert len(section(text, "bench_optim_reductions")) == len(reductions)
    assert "| 3x1000 | rmsprop |" not in text and first != text


def test_bench_buckets_times_each_budget(capsys):
    bench = load("bench_buckets")
    assert bench.main(["--rule", "lars", "--size", "3x20k", "--budgets-mb", "0", "16",
                       "--repeats", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ms")[0].rsplit(": ", 1)[0] for line in lines] == [
        "lars 3x20k budget 0 MB", "lars 3x20k budget 16 MB"]
