"""Run a bundle's configs the way ``python -m monai.bundle run`` does, after checking the request.

The ``train``, ``evaluate`` and ``infer`` verbs and the experiment scripts go through
here: one place that knows which config files make up each job, that resolves the
user's relative paths against the user's working directory, that refuses an
override the configs do not define (with the closest id that they do), and that
prints the equivalent ``python -m monai.bundle run`` command.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xray_seg.shared.errors import UserError
from xray_seg.shared.inputs import device_problem
from xray_seg.shared.paths import BUNDLES

# The config files of each job, in merge order; mix-ins (--config) go before the job's own last file.
JOBS = {
    "train": (["train.yaml"], []),
    "evaluate": (["train.yaml"], ["evaluate.yaml"]),
    "infer": (["inference.yaml"], []),
}
# Overrides whose string values are paths: relative ones are taken from the user's working directory.
PATH_ID = re.compile(r"(^|#)(\w*_(dir|path|file|root)|datalist)$")


def bundle_names() -> list[str]:
    return sorted(p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir()) if BUNDLES.is_dir() else []


def resolve_bundle(bundle: str | Path) -> Path:
    """A bundle folder from a name under bundle/ or a path (relative to the working directory)."""
    text = str(bundle)
    if text in bundle_names():
        return BUNDLES / text
    path = Path(text).expanduser().resolve()
    if (path / "configs").is_dir():
        return path
    raise UserError(
        f"bundle {text} not found: give one of {', '.join(bundle_names())} or the path of a bundle folder "
        f"(one with a configs/ folder)"
    )


def resolve_config(bundle: Path, name: str) -> Path:
    """A mix-in config: a file name in the bundle's configs folder, or a path to a YAML/JSON file."""
    for candidate in (bundle / "configs" / name, Path(name).expanduser().resolve()):
        if candidate.is_file():
            return candidate
    mixins = sorted(p.name for p in (bundle / "configs").glob("*.yaml")
                    if p.name not in {"train.yaml", "evaluate.yaml", "inference.yaml"})  # fmt: skip
    raise UserError(
        f"config file {name} not found (neither in {bundle / 'configs'} nor from the working directory); "
        f"this bundle's mix-ins: {', '.join(mixins) or 'none'}"
    )


def bundle_command(config_files: list[str | Path], bundle: Path = BUNDLES / "cxr_lungs", **overrides: object) -> list[str]:
    """The ``python -m monai.bundle run`` command line for configs of ``bundle``, with overrides.

    ``config_files`` are names in the bundle's configs folder or paths. Override
    values are written so that the command's argument parser (fire) reads them back
    as the same Python values: ``False``/``None`` and lists as Python literals.
    """
    configs = [str(bundle / "configs" / name) for name in config_files]
    config_arg = configs[0] if len(configs) == 1 else json.dumps(configs)  # a list that fire reads back
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--bundle_root", str(bundle),
        "--config_file", config_arg,
        "--meta_file", str(bundle / "configs" / "metadata.json"),
        "--logging_file", str(bundle / "configs" / "logging.conf"),
    ]  # fmt: skip
    for key, value in overrides.items():
        cmd += [f"--{key}", repr(value) if isinstance(value, (list, tuple, dict, bool)) or value is None else str(value)]
    return cmd


def parse_value(text: str) -> Any:
    """A command-line value as YAML (``2`` -> 2, ``[64,64]`` -> list, ``false`` -> False); else the text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # e.g. "@network_def" or "%other.yaml#net"


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """``--key value`` and ``--key=value`` pairs, in order; anything else is a usage error."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise UserError(f"unexpected argument {token!r}: settings are given as --key value")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        elif i + 1 < len(tokens):
            key, value = token[2:], tokens[i + 1]
            i += 2
        else:
            raise UserError(f"setting {token} has no value: give it as {token} VALUE")
        overrides[key] = parse_value(value)
    return overrides


def config_ids(config: Any, prefix: str = "") -> set[str]:
    """Every id of a parsed config: top-level keys and nested ones joined by '#' (list items by index)."""
    ids: set[str] = set()
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        id_ = f"{prefix}{key}"
        ids.add(id_)
        ids |= config_ids(value, id_ + "#")
    return ids


def defined_ids(config_files: list[Path]) -> set[str]:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    return config_ids(parser.config)


def check_overrides(overrides: dict[str, Any], config_files: list[Path], what: str) -> None:
    """Refuse an override that none of ``config_files`` defines, naming the closest id that they do."""
    ids = defined_ids(config_files)
    for key in overrides:
        if key in ids or key == "bundle_root" or key.startswith("_meta_"):
            continue
        close = difflib.get_close_matches(key, ids, n=1)
        hint = f"did you mean --{close[0]}?" if close else f"the settings are the ids in {', '.join(f.name for f in config_files)}"
        raise UserError(f"unknown setting --{key} for {what}; {hint}")


def absolute_paths(overrides: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """Path-valued overrides (ids ending in _dir, _path, _file, _root, or datalist) made absolute against ``cwd``."""
    out = {}
    for key, value in overrides.items():
        if isinstance(value, (str, Path)) and PATH_ID.search(key) and str(value)[:1] not in "$@%":
            value = str((cwd / Path(value).expanduser()).resolve())
        out[key] = value
    return out


@dataclass
class BundleJob:
    """One train/evaluate/infer request: the bundle, its config files and the checked overrides."""

    bundle: Path
    job: str
    config_files: list[Path]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def what(self) -> str:
        return f"bundle {self.bundle.name} ({self.job})"

    def command(self) -> list[str]:
        """The equivalent ``python -m monai.bundle run`` command line."""
        return bundle_command(self.config_files, bundle=self.bundle, **self.overrides)

    def run(self) -> None:
        """Run the workflow in this process, exactly as ``monai.bundle run`` builds and runs it."""
        from monai.bundle import run

        configs = [str(f) for f in self.config_files]
        with warnings.catch_warnings():
            if self.bundle.parent == BUNDLES:  # our own configs: MONAI's "only run configs you trust" notice is noise
                warnings.filterwarnings("ignore", message="parsing config_file")
            run(
                config_file=configs if len(configs) > 1 else configs[0],
                meta_file=str(self.bundle / "configs" / "metadata.json"),
                logging_file=str(self.bundle / "configs" / "logging.conf"),
                bundle_root=str(self.bundle),
                **self.overrides,
            )


def prepare(job: str, bundle: str | Path, mixins: list[str], overrides: dict[str, Any], cwd: Path | None = None,
            after: list[str] = ()) -> BundleJob:
    """Check the request and build the job; a UserError says what is wrong.

    ``mixins`` go before the job's last file (evaluate.yaml), ``after`` after it
    (multi_gpu_evaluate.yaml, which changes what evaluate.yaml sets)."""
    folder = resolve_bundle(bundle)
    first, last = JOBS[job]
    files = [folder / "configs" / name for name in first]
    files += [resolve_config(folder, name) for name in mixins]
    files += [folder / "configs" / name for name in last]
    files += [resolve_config(folder, name) for name in after]
    job_ = BundleJob(folder, job, files, absolute_paths(overrides, cwd or Path.cwd()))
    check_overrides(job_.overrides, files, job_.what)
    if "device" in job_.overrides:
        problem = device_problem(job_.overrides["device"])
        if problem:
            raise UserError(problem)
        if str(job_.overrides["device"]) == "cpu" and "amp" not in job_.overrides and "amp" in defined_ids(files):
            job_.overrides["amp"] = False  # the configs turn AMP on whenever CUDA exists
    if job == "infer" and "dataset_dir" not in job_.overrides:
        raise UserError("infer needs --dataset_dir: the folder of images to segment")
    for key in ("ckpt_path", "dataset_dir", "datalist"):
        value = job_.overrides.get(key)
        if isinstance(value, str) and value[:1] not in "$@%" and not Path(value).exists():
            raise UserError(f"--{key} {value} does not exist")
    return job_
