"""Which text tower answers a library's texts, and when it is exported.

ONNX Runtime's, exported beside the library (``encoders.text``), when there is one: a text query then never
imports torch. Otherwise the PyTorch model's; once that model is loaded anyway (a first text query, a picture
from outside the library, a `search index` run that embedded with it), the tower is exported, at most once per
engine, and ONNX Runtime answers from then on. A read-only library, a machine without `onnx`/`onnxruntime`, or
a model whose tower does not export (recorded, so that no later query tries again) keeps PyTorch's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from encoders.onnx import sidecar

if TYPE_CHECKING:
    from pathlib import Path

    from encoders import ClipEncoder, TextEncoder

PREPACK_FROM_TEXTS = 8  # a one-shot query's ONNX tower prepacks its weights from this many texts (OnnxTextEncoder)


class TextTowers:
    """The text tower of one library and model. ``pytorch`` gives the loaded PyTorch model (loading it if need
    be); ``fixed`` is a tower the caller chose, used as it is; ``one_shot``: see ``SearchEngine``."""

    def __init__(self, folder: Path, fingerprint: str, writable: bool, pytorch: Callable[[], ClipEncoder], *,
                 fixed: TextEncoder | None = None, one_shot: bool = False):
        self.folder, self.fingerprint, self.writable = folder, fingerprint, writable
        self._pytorch = pytorch
        self._tower = fixed
        self._fixed = fixed is not None
        self._one_shot = one_shot
        self._export_tried = False
        self.refusal: str | None = None  # why this model's tower stays on PyTorch, when this engine found out
        self.exported = False  # by this engine

    def for_texts(self, count: int) -> TextEncoder:
        """The tower, chosen (and loaded) when the first texts, ``count`` of them, are to be encoded."""
        if self._tower is None:
            self._tower = self._exported(prepack=not self._one_shot or count >= PREPACK_FROM_TEXTS) or self._pytorch()
        return self._tower

    @property
    def onnx(self) -> bool:
        from encoders.text.onnx_runtime import OnnxTextEncoder

        return isinstance(self._tower, OnnxTextEncoder)

    def prepare(self) -> bool:
        """Whether texts now run in ONNX Runtime, exporting the tower first if it is not there yet."""
        if not (self._export_tried or self._fixed or self.onnx):
            tower = self._exported() or (self._exported() if self.export() else None)
            if tower is not None:
                self._tower = tower
        return self.onnx

    def export(self) -> bool:
        """Export the tower beside the library with the PyTorch model (loaded if need be), unless it is there
        already, was refused before, or cannot be written here (a read-only library, no `onnx`); tried once.
        Whether this call exported it; ``refusal`` says why not when the model's tower does not export."""
        from encoders.onnx.runtime import onnx_available
        from encoders.text.export import ExportRefused, export_text_tower

        if self._export_tried:
            return False
        self._export_tried = True
        if not self.writable or not onnx_available(export=True) or \
                sidecar.export_state(self.folder, self.fingerprint) != sidecar.MISSING:
            return False
        try:
            export_text_tower(self._pytorch(), self.folder)
        except ExportRefused as e:
            sidecar.record_refusal(self.folder, self.fingerprint, str(e))
            self.refusal = str(e)
            return False
        except (OSError, ImportError):  # a full disk, or an `onnx` that cannot save: stay on PyTorch
            return False
        self.exported = True
        return True

    def _exported(self, prepack: bool = True):
        from encoders.text.onnx_runtime import OnnxTextEncoder

        return OnnxTextEncoder.for_library(self.folder, self.fingerprint, prepack)
