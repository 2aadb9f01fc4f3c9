"""Stand-in for torchvision in the test environment only.

PyPI ships torchvision built against CUDA torch alone, so it cannot load beside the CPU build of torch
the tests use. ComfyUI imports torchvision when it imports its model classes (Cosmos, Stable Cascade,
ACE), never uses it on the Hunyuan3D-2 path the tests run; any use of this stand-in fails loudly.
"""

import importlib.abc
import importlib.machinery
import sys
import types


class _Missing(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(f"{self.__name__}.{name} was used in the trellis-mv ComfyUI tests, where torchvision is a stand-in")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Missing(spec.name)

    def exec_module(self, module):
        module.__path__ = []


sys.meta_path.append(_Finder())


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return importlib.import_module(f"{__name__}.{name}")
