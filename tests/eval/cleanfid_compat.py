"""Import clean-fid's `fid` module where torchvision cannot load.

In the code these tests run, clean-fid uses torchvision only for `transforms.ToTensor` (its
ResizeDataset); its legacy_pytorch Inception also subclasses torchvision's Inception blocks
at import time. This environment's CPU torch has no matching torchvision wheel on PyPI, so
when torchvision is missing, a stand-in is installed for the import: ToTensor with
torchvision's semantics (HWC numpy -> CHW float tensor, uint8 scaled to [0, 1], float32
kept as is) and empty placeholders for the Inception blocks (never instantiated here).
"""

import importlib
import sys
import types

import numpy as np
import torch


class _ToTensor:
    def __call__(self, picture):
        array = np.asarray(picture)
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        return tensor.float().div(255) if array.dtype == np.uint8 else tensor


def import_cleanfid_fid(monkeypatch):
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):  # missing, or a build for another torch
        stub = types.ModuleType("torchvision")
        stub.__version__ = "0.0"
        stub.transforms = types.SimpleNamespace(ToTensor=_ToTensor)
        blocks = {name: type(name, (torch.nn.Module,), {}) for name in ("InceptionA", "InceptionC", "InceptionE")}
        stub.models = types.SimpleNamespace(inception=types.SimpleNamespace(**blocks))
        monkeypatch.setitem(sys.modules, "torchvision", stub)
        for name in ("cleanfid.fid", "cleanfid.utils", "cleanfid.features", "cleanfid.inception_pytorch"):
            monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module("cleanfid.fid")
