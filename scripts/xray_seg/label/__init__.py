"""MONAI Label server for the three bundles (cxr_lungs, cxr_anatomy, xray_tomography).

MONAI Label's pins (torch with torchvision, pydicom < 3, numpy < 2) conflict with the
main environment, so the server runs in its own virtual environment, ``.venv-label/``
(``environment.py``, ``requirements.txt``). The modules split along that line:

- run in either environment: ``environment`` (builds the venv), ``server`` (start-up:
  hands over to the venv's interpreter when MONAI Label is not importable),
  ``workspace`` (the app's own bundle copies), ``labels`` (client label maps -> training
  labels), ``finetune`` (the fine-tuning run), ``uncertainty`` (test-time augmentation);
- need MONAI Label (the venv): ``app`` (the ``MONAILabelApp``), ``infer``, ``train``,
  ``strategies``, ``datastore``.
"""
