"""The project's default params.yaml and dvc.yaml, for tests: never the experiment state of the checkout.

`onevision retrain` records its run in the checkout, as `dvc exp run --set-param` does: ``--profile`` in
params.yaml's ``profile``, ``--set`` / ``--reset`` in its ``overrides`` (``--set seed=N`` in ``seed``), and
dvc.yaml follows params.yaml (:func:`onevision.stagegraph.sync_dvc_yaml`). ``make demo`` therefore leaves a
small-profile checkout behind, and a test that copied the repository's params.yaml or dvc.yaml would test
whatever the last retrain left there. Tests build their projects from these helpers instead: the checkout's
params.yaml with that run state put back to the package's defaults (the sections and profiles are kept, a
developer's uncommitted edits of them included; no git needed), and the dvc.yaml generated for it.
tests/policy/test_checkout_state.py runs the configuration and stage-graph tests in a retrained copy.
"""

from __future__ import annotations

import atexit
import io
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests import REPO


def run_state() -> dict[str, Any]:
    """What a params.yaml that no retrain has edited holds in the keys a retrain writes."""
    from onevision.config import Config, complete_overrides

    return {
        "profile": Config.model_fields["profile"].default,
        "seed": Config.model_fields["seed"].default,
        "overrides": complete_overrides({}),
    }


def _plain(node: Any) -> Any:
    return {k: _plain(v) for k, v in node.items()} if isinstance(node, dict) else node


def without_run_state(text: str) -> str:
    """params.yaml ``text`` with profile, seed and overrides put back to :func:`run_state` (comments kept;
    ``text`` itself when they are there already)."""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # as onevision.pipeline writes the file: long lines are not re-wrapped
    # ruamel writes None as an empty value, which `onevision retrain` leaves in the file; the file spells it null
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = rt.load(text)
    changed = False
    for key, value in run_state().items():
        if key not in doc or _plain(doc[key]) != value:
            doc[key] = value
            changed = True
    if not changed:
        return text
    out = io.StringIO()
    rt.dump(doc, out)
    return out.getvalue()


def default_params_text(root: Path = REPO) -> str:
    """``root``'s params.yaml without the run state a retrain recorded there."""
    return without_run_state((Path(root) / "params.yaml").read_text())


def default_params(root: Path = REPO) -> dict[str, Any]:
    """The raw mapping of :func:`default_params_text` (to edit and write into a test's project)."""
    return yaml.safe_load(default_params_text(root))


def default_dvc_yaml_text(root: Path = REPO) -> str:
    """The dvc.yaml that `onevision stage dvc-yaml` writes for :func:`default_params_text`."""
    from onevision.config import load_config
    from onevision.stagegraph import render_dvc_yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(default_params_text(root))
        return render_dvc_yaml(load_config(path), yaml.safe_load(path.read_text()))


@cache
def default_params_file() -> Path:
    """A read-only params.yaml holding :func:`default_params_text`, for ``load_config(path, profile, overrides)``."""
    folder = Path(tempfile.mkdtemp(prefix="onevision-test-defaults-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "params.yaml"
    path.write_text(default_params_text())
    path.chmod(0o444)
    return path


def write_defaults(dest: Path, names: tuple[str, ...] = ("params.yaml",)) -> Path:
    """Write the default ``params.yaml`` (and ``dvc.yaml`` when named) into the project folder ``dest``."""
    writers = {"params.yaml": default_params_text, "dvc.yaml": default_dvc_yaml_text}
    for name in names:
        (Path(dest) / name).write_text(writers[name]())
    return Path(dest)
