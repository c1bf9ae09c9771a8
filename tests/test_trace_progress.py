"""`vramplan trace` as a tool: the progress line names the phase and step as the trace runs, and
the libraries' warnings are silenced unless --verbose."""

from __future__ import annotations

import pytest

from tests.conftest import requires
from vramplan.setup import make_setup

pytestmark = [pytest.mark.trace, requires("torch", "transformers", "peft")]


def test_the_progress_line_names_each_phase_and_step(tiny_config_file: str) -> None:
    from vramplan.trace import run

    said: list[str] = []
    run.trace(tiny_config_file, make_setup(seq_len=16), steps=2, progress=said.append)
    assert said[0] == "building the model"
    for step in (1, 2):
        for phase in ("forward", "backward", "optimizer"):
            assert f"step {step} of 2: {phase}" in said, said
    assert said.index("step 1 of 2: forward") < said.index("step 1 of 2: backward") < said.index("step 2 of 2: forward")


@pytest.mark.parametrize("verbose", [False, True])
def test_libraries_are_quiet_unless_verbose(monkeypatch, tiny_config_file: str, verbose: bool) -> None:
    import vramplan.trace.quiet as quiet
    from vramplan.cli import main

    calls: list[bool] = []
    monkeypatch.setattr(quiet, "quiet_libraries", lambda: calls.append(True))
    argv = ["trace", tiny_config_file, "--seq-len", "16", "--steps", "1", "--json"]
    assert main(argv + (["--verbose"] if verbose else [])) == 0
    assert calls == ([] if verbose else [True])
