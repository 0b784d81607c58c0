"""ONNX export of mmseg / mmdet models with mmnorm layers, checked against onnxruntime.

The exported graph is the network after the data preprocessor: input ``(N, 3, H, W)`` float32,
already normalised the way the config's ``data_preprocessor`` does it (mean / std, channel order).
Outputs:

* mmseg: the ``tensor``-mode logits of the decode head, ``(N, num_classes, H / s, W / s)`` (``s`` =
  the head's output stride; resize to the image and take the argmax to get the label map);
* mmdet: the backbone + neck features (one ``(N, C, H_l, W_l)`` output per level); box decoding and
  NMS stay in the toolbox (or mmdeploy).

Every mmnorm layer exports in eval mode (AdaBN / RN / PBN as a BatchNorm node, IBN as InstanceNorm +
BatchNorm).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    'DEFAULT_TOLERANCE', 'build_model', 'ExportWrapper', 'output_names', 'export_onnx',
    'onnx_outputs', 'torch_outputs', 'max_abs_diff', 'within_tolerance', 'compare'
]

# Allowed max |torch - onnxruntime| relative to the output scale max(1, max|torch output|): see
# docs/deploy.md.
DEFAULT_TOLERANCE = 1e-4


def build_model(cfg, checkpoint: Optional[str] = None) -> nn.Module:
    """Builds ``cfg.model`` in the config's toolbox, loads ``checkpoint`` and returns it in eval
    mode on CPU.

    SyncBN layers (GPU configs) are reverted to BN, as in every single-process run; mmnorm layers
    keep their type.
    """
    import importlib

    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    from ..runtime import get_toolbox
    scope = get_toolbox(cfg)
    init_default_scope(scope)
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    model_cfg = dict(cfg.model)
    model_cfg.pop('pretrained', None)
    model_cfg.pop('init_cfg', None)
    if isinstance(model_cfg.get('backbone'), dict):
        model_cfg['backbone'] = {k: v for k, v in model_cfg['backbone'].items() if k != 'init_cfg'}
    model = importlib.import_module(f'{scope}.registry').MODELS.build(model_cfg)
    model = revert_sync_batchnorm(model)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True, logger='silent')
    return model.eval()


class ExportWrapper(nn.Module):
    """``forward(x)`` -> the tensors the ONNX graph outputs (mmseg logits, or mmdet backbone +
    neck features)."""

    def __init__(self, model: nn.Module, scope: str):
        super().__init__()
        self.model = model
        self.scope = scope

    def forward(self, x: torch.Tensor):
        if self.scope == 'mmseg':
            return self.model(x, None, mode='tensor')
        return tuple(self.model.extract_feat(x))


def output_names(wrapper: ExportWrapper, example: torch.Tensor) -> List[str]:
    with torch.no_grad():
        out = wrapper(example)
    if isinstance(out, torch.Tensor):
        return ['logits']
    return [f'feat{i}' for i in range(len(out))]


def export_onnx(wrapper: ExportWrapper,
                example: torch.Tensor,
                out_file: str,
                dynamic_batch: bool = False,
                opset: int = 18) -> List[str]:
    """Exports ``wrapper`` (eval mode) to ``out_file`` with torch's ``torch.export``-based exporter.

    Returns:
        list[str]: The graph's output names.
    """
    names = output_names(wrapper, example)
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim('batch', min=1, max=1024)}, )
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper, (example, ),
            None,
            input_names=['input'],
            output_names=names,
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            verbose=False)
    program.save(out_file, external_data=False)
    return names


def onnx_outputs(onnx_file: str, x: np.ndarray) -> List[np.ndarray]:
    """Runs ``onnx_file`` on ``x`` with onnxruntime's CPU provider."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(onnx_file, options, providers=['CPUExecutionProvider'])
    return session.run(None, {session.get_inputs()[0].name: x})


def torch_outputs(wrapper: ExportWrapper, x: torch.Tensor) -> List[np.ndarray]:
    with torch.no_grad():
        out = wrapper(x)
    return [t.numpy() for t in ((out, ) if isinstance(out, torch.Tensor) else out)]


def max_abs_diff(reference: Sequence[np.ndarray],
                 other: Sequence[np.ndarray]) -> Tuple[float, float]:
    """``(max |reference - other|, output scale max(1, max |reference|))`` over all outputs
    (shapes must match)."""
    if len(reference) != len(other):
        raise ValueError(f'the ONNX graph has {len(other)} outputs, the model {len(reference)}')
    diff, scale = 0.0, 1.0
    for ref, out in zip(reference, other):
        if ref.shape != out.shape:
            raise ValueError(f'output shape mismatch: torch {ref.shape}, onnxruntime {out.shape}')
        diff = max(diff, float(np.abs(ref.astype(np.float64) - out.astype(np.float64)).max()))
        scale = max(scale, float(np.abs(ref).max()))
    return diff, scale


def within_tolerance(diff: float, scale: float, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    return diff <= tolerance * scale


def compare(wrapper: ExportWrapper, onnx_file: str,
            inputs: Sequence[torch.Tensor]) -> Dict[str, float]:
    """Max abs difference between torch and onnxruntime over ``inputs`` (each ``(N, 3, H, W)``)."""
    diff, scale = 0.0, 1.0
    for x in inputs:
        d, s = max_abs_diff(torch_outputs(wrapper, x), onnx_outputs(onnx_file, x.numpy()))
        diff, scale = max(diff, d), max(scale, s)
    return dict(max_abs_diff=diff, scale=scale)
