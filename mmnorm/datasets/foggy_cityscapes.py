"""Foggy Cityscapes (Sakaridis et al., "Semantic Foggy Scene Understanding with Synthetic Data",
IJCV 2018) for object detection, as an mmdet dataset.

Layout: ``leftImg8bit_foggy/{split}/{city}/{frame}_leftImg8bit_foggy_beta_{0.005,0.01,0.02}.png`` —
every Cityscapes frame rendered with three fog densities (attenuation coefficient beta). The boxes
are Cityscapes' own, so the dataset reads the COCO json of mmdet's
``tools/dataset_converters/cityscapes.py`` (8 classes) and points each frame at its foggy image(s).
``betas=(0.02,)`` is the densest-fog protocol; all three betas give every frame three times, under
distinct image IDs.
"""
from typing import List, Sequence

from mmdet.datasets import CityscapesDataset
from mmdet.registry import DATASETS

__all__ = ['FoggyCityscapesDataset', 'FOG_BETAS']

FOG_BETAS = (0.005, 0.01, 0.02)
_CLEAR_SUFFIX = '_leftImg8bit.png'


@DATASETS.register_module()
class FoggyCityscapesDataset(CityscapesDataset):
    """Cityscapes detection annotations on the Foggy Cityscapes images.

    Args:
        betas (Sequence[float]): Fog densities to include, a non-empty subset of (0.005, 0.01,
            0.02). Defaults to (0.02,).
        **kwargs: See ``mmdet.datasets.CityscapesDataset``; ``ann_file`` is a Cityscapes COCO json
        and
            ``data_prefix['img']`` the foggy image folder of the split (e.g.
            ``'leftImg8bit_foggy/val/'``).

    With one beta, image IDs are the json's; with several, the frame of beta index k gets ``k *
    id_stride + id`` (``id_stride`` = largest json image ID + 1), so COCO evaluation sees distinct
    images.
    """

    def __init__(self, betas: Sequence[float] = (0.02, ), **kwargs) -> None:
        if isinstance(betas, (int, float)):
            betas = (betas, )
        betas = tuple(float(b) for b in betas)
        if not betas or any(b not in FOG_BETAS for b in betas) or len(set(betas)) != len(betas):
            raise ValueError(
                f'betas must be a non-empty subset of {FOG_BETAS} without repeats, got {betas}')
        self.betas = betas
        super().__init__(**kwargs)

    def filter_data(self) -> List[dict]:
        """Cityscapes' filtering (on the json's image IDs), then one entry per frame and fog
        density."""
        frames = super().filter_data()
        if not frames:
            return frames
        stride = max(int(f['img_id']) for f in frames) + 1 if len(self.betas) > 1 else 0
        data_list = []
        for k, beta in enumerate(self.betas):
            for frame in frames:
                if not frame['img_path'].endswith(_CLEAR_SUFFIX):
                    raise ValueError(f'Cityscapes image names end with {_CLEAR_SUFFIX!r}, got '
                                     f"{frame['img_path']!r}")
                info = dict(frame)
                info['img_path'] = frame[
                    'img_path'][:-len(_CLEAR_SUFFIX)] + f'_leftImg8bit_foggy_beta_{beta:g}.png'
                info['img_id'] = k * stride + int(frame['img_id'])
                info['fog_beta'] = beta
                data_list.append(info)
        return data_list
