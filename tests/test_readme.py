"""Every command the README shows runs as written: each `vaekit ...` line of its shell blocks parses
with the real argument parser, and the commands that act on a run are executed against tiny runs
(trained here on digits and dSprites) with the README's run names mapped onto them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
EXECUTED = {"evaluate", "sample", "reconstruct", "interpolate", "traverse", "plot", "fit-prior", "disentanglement",
            "encode", "decode"}
# options that keep an executed command tiny (the README shows the real sizes)
TINY = {"disentanglement": ["--metrics", "mig", "--num-train", "200"],
        "fit-prior": ["--max-examples", "200"]}


def readme_commands() -> list[list[str]]:
    """argv (without 'vaekit') of every command line in the README's sh blocks (vaekit itself or
    torchrun -m vaekit), continuations joined."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["vaekit"]:
                commands.append(words[1:])
            elif words[:1] == ["torchrun"] and "vaekit" in words:  # torchrun ... -m vaekit ARGS
                commands.append(words[words.index("vaekit") + 1 :])
    return commands


def test_the_readme_shows_commands():
    subcommands = {argv[0] for argv in readme_commands()}
    assert {"train", "evaluate", "sample", "export-diffusers", "disentanglement"} <= subcommands


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses(argv):
    from vaekit.cli.main import build_parser

    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"`vaekit {' '.join(argv)}` does not parse (exit {e.code})")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    from helpers import tiny_train

    root = tmp_path_factory.mktemp("readme")
    runs = {"runs/fm": root / "fm", "runs/cvae": root / "cvae", "runs/tc": root / "tc"}
    tiny_train(runs["runs/fm"], epochs=1, limit=300)
    tiny_train(runs["runs/cvae"], epochs=1, limit=300, conditional=True)
    tiny_train(runs["runs/tc"], data="dsprites", model="conv", epochs=1, limit=128, overrides={"channels": [8, 8, 8]},
               data_options={"val_fraction": 0.0})
    return runs


def test_readme_commands_on_runs_execute(cli, tiny_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outputs such as samples.png land here
    executed = 0
    for argv in readme_commands():
        if argv[0] not in EXECUTED or len(argv) < 2 or argv[1] not in tiny_runs:
            continue
        args = [argv[0], str(tiny_runs[argv[1]]), *argv[2:], *TINY.get(argv[0], [])]
        r = cli(*args)
        assert r.code == 0, f"vaekit {' '.join(argv)}: {r.err}"
        executed += 1
    assert executed >= 10
