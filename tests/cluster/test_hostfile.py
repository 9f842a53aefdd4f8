"""SLURM node-list expansion and deepspeed hostfiles."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cluster.hostfile import expand_nodelist, format_hostfile, main, read_hostfile, write_hostfile
from common.errors import UserError
from common.exit_codes import USER_ERROR


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node01", ["node01"]),
        ("n[1-3]", ["n1", "n2", "n3"]),
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("node[01-04,07],gpu-a[1-2]", ["node01", "node02", "node03", "node04", "node07", "gpu-a1", "gpu-a2"]),
        ("gpu[098-101]", ["gpu098", "gpu099", "gpu100", "gpu101"]),  # padding width from the written number
        ("x[8-11]", ["x8", "x9", "x10", "x11"]),  # no padding
        ("a,b,c", ["a", "b", "c"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),  # several bracket groups
        ("login1,node[1-2],login1", ["login1", "node1", "node2"]),  # duplicates dropped, order kept
        ("c[5]", ["c5"]),
        ("h100-[0001-0002].cluster", ["h100-0001.cluster", "h100-0002.cluster"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize(
    "bad, message",
    [
        ("", "empty"),
        ("node[1-3", "never closed"),
        ("node1-3]", "without"),
        ("node[3-1]", "backwards"),
        ("node[a-b]", "bad range"),
        ("node[]", "empty brackets"),
        ("a,,b", "empty item"),
        ("node[1-2] node3", "whitespace"),
        ("n[[1-2]]", "nested"),
        ("n[1-99999999]", "more than"),
    ],
)
def test_expand_nodelist_errors_name_the_problem(bad, message):
    with pytest.raises(UserError, match=message):
        expand_nodelist(bad)


def test_write_and_read_hostfile(tmp_path):
    path = write_hostfile(tmp_path / "sub" / "hostfile", expand_nodelist("gpu[1-2]"), slots=8)
    assert path.read_text() == "gpu1 slots=8\ngpu2 slots=8\n"
    assert [(h.host, h.slots) for h in read_hostfile(path)] == [("gpu1", 8), ("gpu2", 8)]


def test_read_hostfile_reports_every_bad_line(tmp_path):
    p = tmp_path / "hosts"
    p.write_text("# comment\nnode1 slots=4\nnode2\nnode1 slots=2\nnode3 slots=0\n\n")
    with pytest.raises(UserError) as e:
        read_hostfile(p)
    text = str(e.value)
    assert "hosts:3" in text and "not `HOST slots=N`" in text
    assert "listed twice" in text and "slots must be >= 1" in text
    with pytest.raises(UserError, match="does not exist"):
        read_hostfile(tmp_path / "missing")


def test_format_hostfile_rejects_bad_slots():
    with pytest.raises(UserError, match="slots"):
        format_hostfile(["a"], 0)


def test_cli_uses_slurm_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[07-08]")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "4")
    assert main([]) == 0
    assert capsys.readouterr().out == "node07 slots=4\nnode08 slots=4\n"
    assert main(["--nodelist", "bad[", "--output", str(tmp_path / "h")]) == USER_ERROR
    assert "never closed" in capsys.readouterr().err
    assert main(["--expand", "n[1-2]"]) == 0
    assert capsys.readouterr().out == "n1\nn2\n"


def test_standalone_module_writes_file(tmp_path):
    out = tmp_path / "hostfile"
    res = subprocess.run(
        [sys.executable, "-m", "cluster.hostfile", "--nodelist", "a[1-2],b", "--slots", "2", "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert out.read_text() == "a1 slots=2\na2 slots=2\nb slots=2\n"
