"""The benchmarks' command-line entry: Ctrl-C and a flag naming an unknown configuration end
a benchmark with one line, not a traceback, and a benchmark's own exit code reaches the
shell."""

from __future__ import annotations

import importlib
import sys

import pytest

from benchmarks.common import UnknownName, names, run_main


def test_ctrl_c_ends_a_benchmark_with_one_line_and_exit_code_130(capsys):
    def main():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_benchmark_s_exit_code_and_arguments_pass_through():
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda argv: len(argv), ["a", "b", "c"])
    assert exit_info.value.code == 3


@pytest.mark.parametrize("module, argv", [
    ("meta_step", ["--config=nope"]),
    ("replicas", ["--configs=nope"]),
    ("batched_vs_map", ["--configs=nope"]),
    ("end_to_end", ["--experiments=nope"]),
])
def test_a_flag_naming_an_unknown_configuration_ends_with_one_line(module, argv, monkeypatch,
                                                                    capsys):
    """Not a KeyError traceback from deep inside the benchmark: the flag, the bad name and the
    valid choices, before anything runs."""
    main = importlib.import_module(f"benchmarks.{module}").main
    monkeypatch.setattr(sys, "argv", [f"{module}.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    flag = argv[0].split("=")[0]
    assert err.startswith(f"{module}.py: error: {flag}: unknown "), err
    assert "'nope'; choose from " in err
    assert ("sinusoid_maml_k10" if module == "end_to_end" else "omniglot5") in err


def test_every_name_of_a_list_flag_is_checked_and_absl_s_lists_are_taken():
    assert names("configs", "a,b", ["a", "b", "c"], "configuration") == ["a", "b"]
    assert names("configs", ["c"], ["a", "b", "c"], "configuration") == ["c"]
    with pytest.raises(UnknownName, match=r"^--families: unknown family 'x'; choose from a, b$"):
        names("families", "a,x", ["a", "b"], "family")
