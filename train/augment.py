"""open_clip's training crop for a whole batch at once: the same boxes, one resampling call, one normalisation.

open_clip's training transform is RandomResizedCrop → RGB → ToTensor → Normalize, run picture by picture: on
a small model that per-picture work (PIL crop and resize, tensor conversion, normalising) costs more than the
loss and the optimizer together. Here the loader only draws each picture's crop box (torchvision's own
``RandomResizedCrop.get_params``: the same distribution, seeded per sample as before), and the batch is cut
and resized by one ``grid_sample`` (bilinear, every crop its own affine map; faster than torchvision's
``roi_align``) and normalised in one go. Bilinear instead of PIL's bicubic changes the pixels very little.
The figures: BENCHMARKS.md, "Figures behind choices in the code", training.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as F

_PASSIVE = ("MaybeConvertMode", "_convert_to_rgb")  # RGB already: TrainPictures decodes to RGB
_TO_TENSOR = ("ToTensor", "MaybeToTensor")


class BatchCrop:
    """The crop box per picture (``draw``, in the loader), the pixels per batch (``collate``)."""

    def __init__(self, crop: RandomResizedCrop, mean, std):
        self.crop, self.mean, self.std = crop, list(mean), list(std)
        self.size = tuple(crop.size)

    @classmethod
    def of(cls, transform) -> BatchCrop | None:
        """The batched form of ``transform`` when it is open_clip's plain training transform, else None."""
        steps = list(getattr(transform, "transforms", []) or [])
        names = [type(t).__name__ for t in steps]
        core = [n for n in names if n not in _PASSIVE]
        if len(core) != 3 or not isinstance(steps[0], RandomResizedCrop) or core[1] not in _TO_TENSOR \
                or core[2] != "Normalize":
            return None
        return cls(steps[0], steps[-1].mean, steps[-1].std)

    def draw(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """(the picture as uint8 H×W×3, its crop box top, left, height, width) from torch's default generator."""
        box = self.crop.get_params(image, self.crop.scale, self.crop.ratio)
        return np.asarray(image), box

    def collate(self, items: list[tuple[np.ndarray, tuple[int, int, int, int]]]) -> torch.Tensor:
        """The model's N×3×H×W input: every crop resized to the model's size, normalised."""
        arrays = [a for a, _ in items]
        height, width = max(a.shape[0] for a in arrays), max(a.shape[1] for a in arrays)
        if all(a.shape[:2] == (height, width) for a in arrays):
            canvas = torch.from_numpy(np.stack(arrays))
        else:  # pictures of several sizes: each at the top left of one canvas (its box says where it is)
            canvas = torch.zeros((len(arrays), height, width, 3), dtype=torch.uint8)
            for k, array in enumerate(arrays):
                canvas.numpy()[k, :array.shape[0], :array.shape[1]] = array
        pixels = canvas.float().div_(255).permute(0, 3, 1, 2)  # channels-last view: no copy
        # Output coordinate u in [-1, 1] reads input coordinate scale·u + shift (align_corners=False: the
        # crop's outer pixel edges map to ±1), so the output is the crop resized, as F.resized_crop gives it.
        boxes = torch.tensor([box for _, box in items], dtype=torch.float32)  # top, left, height, width
        theta = torch.zeros(len(items), 2, 3)
        theta[:, 0, 0] = boxes[:, 3] / width
        theta[:, 0, 2] = (2 * boxes[:, 1] + boxes[:, 3]) / width - 1
        theta[:, 1, 1] = boxes[:, 2] / height
        theta[:, 1, 2] = (2 * boxes[:, 0] + boxes[:, 2]) / height - 1
        grid = nnf.affine_grid(theta, [len(items), 3, *self.size], align_corners=False)
        out = nnf.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return F.normalize(out.contiguous(), self.mean, self.std)
