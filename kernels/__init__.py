"""Triton kernels, installed as ``vit_deploy.kernels``.

Filled by the fused attention kernel (issue 3). Until it lands, importing
``attention`` fails, and ``attention='triton'`` raises a clear ConfigError.
"""
