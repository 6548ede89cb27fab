"""Start the MONAI Label server: ``serve(studies, host="127.0.0.1", port=8000)``.

Called from the main environment, ``serve`` hands over to the MONAI Label environment's
interpreter (``.venv-label``, built by ``environment.build``); inside it, it prepares the
working folder (bundle copies, the app's ``main.py``), sets MONAI Label's settings and
runs its FastAPI app with uvicorn. Offline: the app serves the bundles of this package
and never asks the MONAI model zoo for anything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

from xray_seg.label import environment, workspace
from xray_seg.label.images import EXTENSIONS
from xray_seg.shared.errors import UserError

WORK_DIR_NAME = ".xray-seg-label"
APP_MAIN = '''"""Written by xray_seg.label.server: MONAI Label loads the MONAILabelApp subclass of main.py."""
from xray_seg.label.app import XraySegApp  # noqa: F401
'''
# MONAILabelError -> HTTP status; anything not listed is a server error (500). An unknown
# model or strategy ("There is no ...") is 404.
STATUS = {"INVALID_INPUT": 400, "APP_ERROR": 404}


def default_work_dir(studies: str | os.PathLike) -> Path:
    """``<studies>/.xray-seg-label``: MONAI Label lists only the files directly in the
    studies folder, so the app's working folder can live there, beside its labels."""
    return Path(studies).resolve() / WORK_DIR_NAME


def prepare_app(work_dir: str | os.PathLike) -> Path:
    """The working folder's ``app/`` (with ``main.py``) and ``bundles/`` copies; the app folder."""
    app_dir = Path(work_dir) / "app"
    app_dir.mkdir(parents=True, exist_ok=True)
    main = app_dir / "main.py"
    if not main.is_file() or main.read_text() != APP_MAIN:
        main.write_text(APP_MAIN)
    workspace.prepare(work_dir)
    return app_dir


def serve(studies: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000,
          work_dir: str | os.PathLike | None = None, venv: str | os.PathLike = environment.VENV,
          log_level: str = "info") -> int:
    """Serve the three bundles over HTTP for the images in ``studies`` until stopped.

    ``host``: 127.0.0.1 (this machine only) unless asked otherwise. ``work_dir``: the bundle
    copies, fine-tuning runs and app folder (default ``<studies>/.xray-seg-label``). When
    MONAI Label is not importable here, the server runs under ``venv``'s interpreter,
    which must have been built (``xray-seg label setup``). Returns the exit status.
    """
    studies = Path(studies).resolve()
    if not studies.is_dir():
        raise UserError(f"{studies}: studies folder not found (the folder of images to annotate)")
    work_dir = Path(work_dir).resolve() if work_dir else default_work_dir(studies)
    if importlib.util.find_spec("monailabel") is None:
        if not environment.is_built(venv):
            raise UserError(f"the MONAI Label environment {venv} is not built: run `xray-seg label setup`")
        cmd = [str(environment.python_of(venv)), "-m", "xray_seg.cli", "label", "serve", "--studies", str(studies),
               "--host", host, "--port", str(port), "--work_dir", str(work_dir), "--log_level", log_level]
        try:
            return subprocess.call(cmd)
        except KeyboardInterrupt:
            return 130
    run(studies, host, port, work_dir, log_level)
    return 0


def settings_env(studies: Path, app_dir: Path, port: int) -> dict[str, str]:
    """MONAI Label's settings (read from the environment when ``monailabel.config`` is imported)."""
    scripts = str(Path(__file__).resolve().parents[2])
    return {
        "MONAI_LABEL_APP_DIR": str(app_dir),
        "MONAI_LABEL_STUDIES": str(studies),
        "MONAI_LABEL_SERVER_PORT": str(port),
        "MONAI_LABEL_DATASTORE_FILE_EXT": json.dumps(list(EXTENSIONS)),
        # MONAI Label's training subprocess appends to PYTHONPATH, and fails when it is unset.
        "PYTHONPATH": os.pathsep.join(p for p in (scripts, os.environ.get("PYTHONPATH", "")) if p),
        # Never the network: no zoo downloads (the app does not use the zoo anyway).
        "BUNDLE_DOWNLOAD_SRC": "github",
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
    }


def run(studies: Path, host: str, port: int, work_dir: Path, log_level: str = "info") -> None:
    """Inside the MONAI Label environment: prepare ``work_dir`` and run the server (blocks)."""
    app_dir = prepare_app(work_dir)
    os.environ.update(settings_env(studies, app_dir, port))
    import uvicorn
    from monailabel.app import app

    add_error_handlers(app)
    print(f"xray-seg MONAI Label server: http://{host}:{port}/ (studies {studies}, work folder {work_dir})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def add_error_handlers(app) -> None:
    """MONAI Label's own errors as HTTP 400/404 with their message, instead of a bare 500."""
    from fastapi.responses import JSONResponse
    from monailabel.interfaces.exception import MONAILabelException

    async def monai_label_error(request, exc: MONAILabelException):
        status = 404 if "There is no" in exc.msg else STATUS.get(exc.error.value, 500)
        return JSONResponse(status_code=status, content={"detail": exc.msg, "error": exc.error.value})

    async def other_error(request, exc: Exception):
        return JSONResponse(status_code=500, content={"detail": f"{type(exc).__name__}: {exc}"})

    app.add_exception_handler(MONAILabelException, monai_label_error)
    app.add_exception_handler(Exception, other_error)
