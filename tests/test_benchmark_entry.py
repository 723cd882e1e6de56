"""The benchmarks' command-line entry: Ctrl-C ends a benchmark with one line, not a
traceback, and a benchmark's own exit code reaches the shell."""

from __future__ import annotations

import pytest

from benchmarks.common import run_main


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
