"""``xray-seg``: help of every verb, and the checks made before a bundle workflow runs.

Most run the command in this process (``main([...])``) with ``--dry_run``, which
checks everything and prints the ``python -m monai.bundle run`` command without
running it; the entry points and other working directories go through a subprocess.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runs import cli
from xray_seg.cli.main import build_parser
from xray_seg.shared.bundles import config_ids, parse_overrides
from xray_seg.shared.paths import BUNDLES

VERBS = [
    [], ["demo"], ["manifest"], ["manifest", "images"], ["manifest", "volumes"], ["train"], ["evaluate"], ["infer"],
    ["benchmark"], ["benchmark", "cxr"], ["benchmark", "tomo"], ["experiments", "tomo"], ["baseline", "tomo"],
    ["curves"], ["synthetic"], ["synthetic", "cxr"], ["synthetic", "tomo"],
]  # fmt: skip


def test_every_verb_is_listed_and_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    top = build_parser().format_help()
    for verb in {v[0] for v in VERBS if v}:
        assert f"    {verb}" in top
    for verb in VERBS:
        code, out, _ = cli([*verb, "--help"], capsys)
        assert code == 0 and out.startswith(f"usage: xray-seg {' '.join(verb)}".rstrip()), verb


def test_bundle_verb_help_lists_main_settings_with_each_bundles_default(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = cli(["train", "--help"], capsys)
    line = next(line for line in out.splitlines() if line.strip().startswith("--num_epochs"))
    assert line.split()[1:] == ["120", "|", "60", "|", "30"]  # cxr_anatomy | cxr_lungs | xray_tomography
    for flag in ("--bundle", "--config", "--dataset_dir", "--datalist", "--output_dir", "--device", "--dry_run"):
        assert flag in out
    _, out, _ = cli(["infer", "--help"], capsys)
    assert "--ckpt_path" in out and "--datalist" not in out


def test_console_script_and_module_are_the_same_command() -> None:
    import tomllib

    pyproject = tomllib.loads((BUNDLES.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["xray-seg"] == "xray_seg.cli.main:main"
    result = subprocess.run([sys.executable, "-m", "xray_seg.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("usage: xray-seg")


def test_unknown_setting_is_refused_with_the_closest_valid_id(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(["train", "--bundle", "cxr_lungs", "--num_epoch", "2", "--dry_run"], capsys)
    assert code == 2 and out == ""
    assert err == "ERROR: unknown setting --num_epoch for bundle cxr_lungs (train); did you mean --num_epochs?\n"
    code, _, err = cli(["infer", "--bundle", "xray_tomography", "--dataset_dir", ".", "--slab_dept", "8"], capsys)
    assert code == 2 and "(infer); did you mean --slab_depth?" in err
    # evaluate merges train.yaml: its ids count, and so do evaluate.yaml's own
    code, _, err = cli(["evaluate", "--bundle", "cxr_lungs", "--collage_row", "3", "--dry_run"], capsys)
    assert code == 2 and "did you mean --collage_rows?" in err


def test_known_and_nested_settings_are_accepted_and_printed_as_a_monai_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = cli(
        ["train", "--bundle", "cxr_lungs", "--num_epochs", "2", "--roi_size", "[64,64]", "--resume", "false",
         "--train#dataloader#batch_size", "2", "--validate#evaluator#val_interval=3", "--dry_run"], capsys,
    )  # fmt: skip
    assert code == 2 and "unknown setting --validate#evaluator#val_interval" in err  # nested, but not defined
    code, out, err = cli(
        ["train", "--bundle", "cxr_lungs", "--num_epochs", "2", "--roi_size", "[64,64]", "--resume", "false",
         "--train#dataloader#batch_size", "2", "--dry_run"], capsys,
    )  # fmt: skip
    assert code == 0 and err == ""
    cmd = shlex.split(out.strip().removeprefix("$ "))
    assert cmd[1:5] == ["-m", "monai.bundle", "run", "--bundle_root"] and cmd[5] == str(BUNDLES / "cxr_lungs")
    pairs = dict(zip(cmd[4::2], cmd[5::2]))
    assert pairs["--num_epochs"] == "2" and pairs["--roi_size"] == "[64, 64]" and pairs["--resume"] == "False"
    assert pairs["--train#dataloader#batch_size"] == "2"


def test_mixins_go_between_train_and_evaluate_configs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["evaluate", "--bundle", "cxr_anatomy", "--config", "invertednet.yaml", "--dry_run"], capsys)
    assert code == 0
    cmd = shlex.split(out.strip().removeprefix("$ "))
    configs = json.loads(cmd[cmd.index("--config_file") + 1])
    assert [Path(c).name for c in configs] == ["train.yaml", "invertednet.yaml", "evaluate.yaml"]


def test_settings_parse_as_yaml() -> None:
    assert parse_overrides(["--a", "2", "--b=[64, 64]", "--c", "false", "--d", "null", "--e", "@net", "--f", "x/y"]) == {
        "a": 2, "b": [64, 64], "c": False, "d": None, "e": "@net", "f": "x/y",
    }  # fmt: skip
    assert config_ids({"a": {"b": [1, {"c": 2}]}}) == {"a", "a#b", "a#b#0", "a#b#1", "a#b#1#c"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--bundle", "cxr_lung"], "ERROR: bundle cxr_lung not found: give one of cxr_anatomy, cxr_lungs"),
        (["train", "--bundle", "cxr_anatomy", "--config", "inverted.yaml"], "ERROR: config file inverted.yaml not found"),
        (["infer", "--bundle", "cxr_lungs"], "ERROR: infer needs --dataset_dir"),
        (["infer", "--bundle", "cxr_lungs", "--dataset_dir", ".", "--ckpt_path", "no/model.pt"], "ERROR: --ckpt_path "),
        (["train", "--bundle", "cxr_lungs", "--datalist", "no.json"], "ERROR: --datalist "),
        (["train", "--bundle", "cxr_lungs", "--num_epochs"], "ERROR: setting --num_epochs has no value"),
        (["train", "--bundle", "cxr_lungs", "2"], "ERROR: unexpected argument '2'"),
        (["train"], "ERROR: xray-seg train: the following arguments are required: --bundle"),
        (["trian"], "ERROR: xray-seg: argument VERB: invalid choice: 'trian'"),
    ],
)  # fmt: skip
def test_bad_requests_are_one_error_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli([*args, "--dry_run"] if args[0] != "trian" else args, capsys)
    assert code == 2 and "Traceback" not in err and "$ " not in out
    errors = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and errors[0].startswith(message), err
    if "--ckpt_path" in args:
        assert str(tmp_path / "no" / "model.pt") in errors[0]  # named from the working directory


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_device_without_cuda_is_refused(device: str, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = cli(["train", "--bundle", "cxr_lungs", "--device", device, "--dry_run"], capsys)
    assert code == 2 and err.startswith(f"ERROR: --device {device}: CUDA is not available on this machine") and "--device cpu" in err and err.count("\n") == 1


def test_cpu_device_turns_amp_off(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["infer", "--bundle", "cxr_lungs", "--dataset_dir", ".", "--device", "cpu", "--dry_run"], capsys)
    assert code == 0 and "--device cpu --amp False" in out


@pytest.mark.parametrize("how", ["bundle name, in this process", "relative bundle path, new process"])
def test_relative_paths_are_taken_from_the_working_directory(
    how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """From any folder: bundle by name or relative path, data and outputs relative to that folder."""
    (tmp_path / "in").mkdir()
    (tmp_path / "w.pt").write_bytes(b"")
    args = ["--dataset_dir", "in", "--output_dir", "out", "--ckpt_path", "w.pt", "--dry_run"]
    if how.startswith("bundle name"):
        monkeypatch.chdir(tmp_path)
        code, out, err = cli(["infer", "--bundle", "cxr_lungs", *args], capsys)
    else:
        bundle = Path(*[".."] * (len(tmp_path.parts) - 1)) / BUNDLES.relative_to("/") / "cxr_lungs"
        result = subprocess.run([sys.executable, "-m", "xray_seg.cli", "infer", "--bundle", str(bundle), *args],
                                capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
        code, out, err = result.returncode, result.stdout, result.stderr
    assert code == 0, err
    cmd = shlex.split(out.strip().removeprefix("$ "))
    pairs = dict(zip(cmd[4::2], cmd[5::2]))
    assert pairs["--bundle_root"] == str(BUNDLES / "cxr_lungs")
    assert pairs["--dataset_dir"] == str(tmp_path / "in") and pairs["--output_dir"] == str(tmp_path / "out")
    assert pairs["--ckpt_path"] == str(tmp_path / "w.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "w.pt"]  # a dry run writes nothing


@pytest.mark.parametrize("launch,expected", [
    (["--nproc", "2"], ["--nproc_per_node", "2", "--standalone"]),
    (["--nnodes", "2", "--node_rank", "1", "--rdzv_endpoint", "127.0.0.1:29511"],
     ["--nnodes", "2", "--node_rank", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:29511"]),
])
def test_train_on_several_processes_wraps_torchrun(launch: list[str], expected: list[str],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["train", "--bundle", "cxr_anatomy", *launch, "--config", "invertednet.yaml", "--dry_run"],
                       capsys)
    command = shlex.split(out.strip().splitlines()[-1][2:])
    assert code == 0 and command[1:3] == ["-m", "torch.distributed.run"]
    assert " ".join(expected) in " ".join(command)
    configs = json.loads(command[command.index("--config_file") + 1])
    # The distributed mix-in right after train.yaml, the user's own after it.
    assert [Path(c).name for c in configs] == ["train.yaml", "multi_gpu_train.yaml", "invertednet.yaml"]


def test_inference_on_several_processes_wraps_torchrun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["infer", "--bundle", "cxr_lungs", "--nproc", "2", "--dataset_dir", str(tmp_path), "--dry_run"],
                       capsys)
    command = shlex.split(out.strip().splitlines()[-1][2:])
    assert code == 0 and command[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in command
    configs = json.loads(command[command.index("--config_file") + 1])
    assert [Path(c).name for c in configs] == ["inference.yaml", "multi_gpu_inference.yaml"]


def test_evaluation_on_several_processes_wraps_torchrun(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["evaluate", "--bundle", "cxr_anatomy", "--nnodes", "2", "--node_rank", "0", "--rdzv_endpoint",
                        "127.0.0.1:29512", "--config", "invertednet.yaml", "--dry_run"], capsys)
    command = shlex.split(out.strip().splitlines()[-1][2:])
    assert code == 0 and command[1:3] == ["-m", "torch.distributed.run"] and "--standalone" not in command
    assert "--nnodes 2 --node_rank 0 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:29512" in " ".join(command)
    configs = json.loads(command[command.index("--config_file") + 1])
    # The distributed mix-in after evaluate.yaml, whose initialize it replaces.
    assert [Path(c).name for c in configs] == ["train.yaml", "invertednet.yaml", "evaluate.yaml",
                                               "multi_gpu_evaluate.yaml"]


def test_3d_inference_on_several_processes_wraps_torchrun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["infer", "--bundle", "xray_tomography", "--nproc", "3", "--dataset_dir", str(tmp_path),
                        "--dry_run"], capsys)
    command = shlex.split(out.strip().splitlines()[-1][2:])
    assert code == 0 and "--nproc_per_node" in command and command[command.index("--nproc_per_node") + 1] == "3"
    configs = json.loads(command[command.index("--config_file") + 1])
    assert [Path(c).name for c in configs] == ["inference.yaml", "multi_gpu_inference.yaml"]


@pytest.mark.parametrize("status,expected", [(2, 2), (3, 1)], ids=["bad input", "crash"])
def test_torchrun_failures_end_like_one_process(status: int, expected: int, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Ranks refusing bad input (exit 2, their own ERROR: line) end the command with 2 and
    without torchrun's tracebacks; any other failure ends it with 1 and one ERROR: line."""
    from xray_seg.cli.bundle_verbs import launch

    script = tmp_path / "rank.py"
    script.write_text(f"import sys\nprint('ERROR: x: bad', file=sys.stderr)\nsys.exit({status})\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script)]
    assert launch(command) == expected
    err = capsys.readouterr().err
    # torchrun's own report of failed ranks is a ChildFailedError traceback.
    assert "ChildFailedError" not in err and ("ERROR: 2 process(es)" in err) == (expected == 1)


def test_a_distributed_run_needs_an_item_per_process(capsys: pytest.CaptureFixture[str]) -> None:
    from xray_seg.shared.inputs import check_shares, shard

    items = [{"image": str(i)} for i in range(5)]
    assert [shard(items, r, 2) for r in (0, 1)] == [items[0::2], items[1::2]]
    check_shares(2, 2)
    with pytest.raises(SystemExit) as stop:
        shard(items[:2], 0, 3, "volumes")
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == "ERROR: 2 volumes for 3 processes: every process needs at least one; run on at most 2 processes (--nproc)"
