"""cluster/options.py: an option declared once on a dataclass field is in --help and in the object."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from cluster.cli import MODES, build_parser
from cluster.mlflow_server import MlflowServerOptions
from cluster.modes.job import JobArgs
from cluster.options import add_options, from_args, option
from cluster.sbatch import SbatchOptions


@dataclass
class Demo:
    target: str = option(help="what to run", positional=True)
    rest: list[str] = option(help="more words", default_factory=list, positional=True)
    count: int = option(3, "how many (default %(default)s)")
    ratio: float = option(0.5, "a fraction")
    limit: int | None = option(None, "an optional cap")
    verbose: bool = option(False, "say more")
    wait_s: int = option(10, "seconds to wait", flag="--wait")
    tag: list[str] = option(help="a tag, repeatable", default_factory=list, metavar="TAG")
    mode: str = option("fast", "fast or slow", choices=("fast", "slow"))
    internal: str = "kept"  # not an option: stays off the command line


def _parser(cls=Demo) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo")
    add_options(p, cls)
    return p


def test_a_field_declared_once_is_in_help_and_in_the_dataclass():
    help_text = _parser().format_help()
    for flag in ("--count COUNT", "--ratio RATIO", "--limit LIMIT", "--verbose", "--wait WAIT", "--tag TAG"):
        assert flag in help_text, flag
    assert "how many (default 3)" in help_text  # %(default)s prints the field's default
    assert "{fast,slow}" in help_text and "target" in help_text and "internal" not in help_text

    args = ["go", "a", "b", "--count", "7", "--ratio", "0.25", "--verbose", "--wait", "2"]
    got = from_args(Demo, _parser().parse_args([*args, "--tag", "x", "--tag", "y", "--mode", "slow"]))
    assert got == Demo("go", ["a", "b"], 7, 0.25, None, True, 2, ["x", "y"], "slow")
    assert from_args(Demo, _parser().parse_args(["go"])) == Demo("go")  # defaults = the dataclass's


def test_types_follow_the_annotations():
    ns = _parser().parse_args(["go", "--limit", "4"])
    assert ns.limit == 4 and isinstance(ns.limit, int)
    with pytest.raises(SystemExit):
        _parser().parse_args(["go", "--count", "many"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["go", "--mode", "medium"])


def test_list_defaults_are_not_shared_between_parses():
    first = from_args(Demo, _parser().parse_args(["go", "--tag", "x"]))
    second = from_args(Demo, _parser().parse_args(["go"]))
    assert first.tag == ["x"] and second.tag == []


def test_a_field_without_default_is_required():
    @dataclass
    class Needs:
        path: str = option(help="a file")

    with pytest.raises(SystemExit):
        _parser(Needs).parse_args([])
    assert from_args(Needs, _parser(Needs).parse_args(["--path", "f"])) == Needs("f")


@pytest.mark.parametrize(
    "argv, cls",
    [
        (["slurm", "c.yaml"], SbatchOptions),
        (["mlflow-server"], MlflowServerOptions),
        (["local", "c.yaml"], JobArgs),
    ],
)
def test_launch_options_are_all_flags_with_the_dataclass_defaults(argv, cls):
    for f in dataclasses.fields(cls):
        assert "cli_option" in f.metadata, f"{cls.__name__}.{f.name} is not a ./launch.sh {argv[0]} option"
    built = from_args(cls, build_parser().parse_args(argv))
    assert built == (cls("c.yaml") if cls is JobArgs else cls())


def test_slurm_flags_reach_sbatch_options():
    argv = [
        "slurm",
        "--nodes=2",
        "--gpus-per-node=8",
        "--nproc-per-node=4",
        "--cpus-per-task=32",
        "--partition=gpu",
        "--account=proj",
        "--qos=high",
        "--time=1:00:00",
        "--mem=0",
        "--job-name=j",
        "--launcher=deepspeed",
        "--signal-lead=60",
        "--shutdown-timeout=90",
        "--max-requeues=3",
        "--rdzv-host=10.0.0.1",
        "--sbatch=--exclusive",
        "--sbatch=--constraint=h100",
        "c.yaml",
    ]
    assert from_args(SbatchOptions, build_parser().parse_args(argv)) == SbatchOptions(
        nodes=2,
        gpus_per_node=8,
        nproc_per_node=4,
        cpus_per_task=32,
        partition="gpu",
        account="proj",
        qos="high",
        time="1:00:00",
        mem="0",
        job_name="j",
        launcher="deepspeed",
        signal_lead_s=60,
        shutdown_timeout_s=90,
        max_requeues=3,
        rdzv_host="10.0.0.1",
        extra_sbatch=["--exclusive", "--constraint=h100"],
    )
    assert set(MODES) == {"local", "deepspeed", "slurm", "mlflow-server"}
