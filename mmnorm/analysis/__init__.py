from .bn_shift import compare_moments, input_moments, mean_shift, running_moments, symmetric_kl

__all__ = ['compare_moments', 'input_moments', 'mean_shift', 'running_moments', 'symmetric_kl']
