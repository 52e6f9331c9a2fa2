"""Installed as `sitecustomize.py` in the MONAI Label venv (see install.sh), so it runs at interpreter start.

MONAI Label 0.8.5 imports pydicom-seg 0.4.1 at start-up, which imports pydicom 2's private module
`pydicom._storage_sopclass_uids`; pydicom 3 (this project's pin) keeps the same UID constants in `pydicom.uid`.
"""

import sys

import pydicom.uid

sys.modules.setdefault("pydicom._storage_sopclass_uids", pydicom.uid)
