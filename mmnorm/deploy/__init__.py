"""Deployment: ONNX export checked against onnxruntime, and folding mmnorm layers into plain BN."""
from .fold import FOLDABLE, fold_config, fold_norms
from .onnx_export import DEFAULT_TOLERANCE, ExportWrapper, build_model, compare, export_onnx

__all__ = [
    'FOLDABLE', 'fold_config', 'fold_norms', 'DEFAULT_TOLERANCE', 'ExportWrapper', 'build_model',
    'compare', 'export_onnx'
]
