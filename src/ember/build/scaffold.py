"""`ember init`: a new worker project (handler, requirements, test input, Dockerfile, vendored worker SDK).

Writes files from `build/templates/`; never overwrites a user's file unless forced. The vendored copy of
`ember.serverless` (under `vendor/`) is Ember's own and is refreshed on every call.
"""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path

import ember.serverless
from ember.core.errors import InvalidInput, Problem

DEFAULT_BASE_IMAGE = "python:3.11-slim"
VENDOR_DIR = "vendor"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IMAGE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]*$")

# project file -> template name
_FILES = {
    "handler.py": "handler.py.tmpl",
    "requirements.txt": "requirements.txt.tmpl",
    "test_input.json": "test_input.json.tmpl",
    ".dockerignore": "dockerignore.tmpl",
    "Dockerfile": "Dockerfile.tmpl",
}


def _template(name: str) -> str:
    return resources.files("ember.build").joinpath("templates", name).read_text(encoding="utf-8")


def model_dir(model: str) -> str:
    """Where a baked model lives inside the image."""
    return f"/models/{model}"


def render_dockerfile(base_image: str = DEFAULT_BASE_IMAGE, model: str | None = None) -> str:
    """The Dockerfile text for `base_image`, with a model download step when `model` (org/name) is given."""
    problems = []
    if not _IMAGE_REF.match(base_image):
        problems.append(Problem("base_image", "not a valid image reference", base_image))
    if model is not None and not _MODEL_NAME.match(model):
        problems.append(Problem("model", "expected a Hugging Face name like org/name", model))
    if problems:
        raise InvalidInput("cannot write the Dockerfile", problems)
    step = _template("model_step.tmpl").format(model=model, model_dir=model_dir(model)) if model else ""
    return _template("Dockerfile.tmpl").format(base_image=base_image, model_step=step)


def vendor_sdk(project_dir: str | Path) -> Path:
    """Copy the installed `ember.serverless` package to `project_dir/vendor/ember/serverless`.

    The worker SDK is standard library only, so this copy is all a worker image needs of Ember. Returns
    the `vendor` directory. Replaces any previous copy (stale modules included).
    """
    vendor = Path(project_dir) / VENDOR_DIR
    package = vendor / "ember"
    target = package / "serverless"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for source in sorted(Path(p) for p in ember.serverless.__path__):
        for module in sorted(source.glob("*.py")):
            shutil.copyfile(module, target / module.name)
    (package / "__init__.py").write_text(
        '"""Ember\'s worker SDK, vendored by `ember init` (refresh it with `ember init --force`)."""\n',
        encoding="utf-8",
    )
    return vendor


def init_project(
    directory: str | Path,
    *,
    base_image: str = DEFAULT_BASE_IMAGE,
    model: str | None = None,
    force: bool = False,
) -> list[Path]:
    """Write a new worker project into `directory` (created if missing); return the files written.

    Raises InvalidInput for a bad base image or model name, and when a project file already exists and
    `force` is false (listing every such file, and writing nothing).
    """
    root = Path(directory)
    dockerfile = render_dockerfile(base_image, model)
    existing = [name for name in _FILES if (root / name).exists()]
    if existing and not force:
        raise InvalidInput(
            f"{root} already has {', '.join(existing)}; use --force to overwrite",
            [Problem(name, "already exists") for name in existing],
        )
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for name, template in _FILES.items():
        text = dockerfile if name == "Dockerfile" else _template(template).format()
        path = root / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    vendor = vendor_sdk(root)
    written.extend(sorted(vendor.rglob("*.py")))
    return written
