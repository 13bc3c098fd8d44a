"""The AST's patch embedding convolution, computed as one matrix product.

This module knows nothing of scikit-learn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchProjection"]


class PatchProjection(nn.Conv2d):
    """The patch embedding's strided ``p x p`` convolution, computed as one
    matrix product.

    A :class:`~torch.nn.Conv2d` (its weights, names and shapes are the
    reference implementations', and forward hooks on it see the convolution's
    input and output): the patches are gathered from a strided view of the
    ``(B, 1, F, T)`` input (``Tensor.unfold``) into one ``(B, f*t, p*p)``
    matrix and multiplied by the flattened kernel; the ``(B, D, f, t)`` output
    is a view of the ``(B, f*t, D)`` product. The products and sums are the
    convolution's, in another order. GPUs run a 16 x 16 convolution at stride
    10 far below their matrix-product rate; on the CPU the two take the same
    time (docs/performance.rst). Under autocast the input is cast before the
    patches are gathered, so the matrix is made once, in the lower precision
    (the values autocast's convolution would cast it to).

    Examples
    --------
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from skast._patches import PatchProjection
    >>> proj = PatchProjection(1, 8, kernel_size=(16, 16), stride=(10, 10))
    >>> x = torch.randn(2, 1, 32, 48)                  # (batch, 1, mel bins, frames)
    >>> out = proj(x)
    >>> out.shape                                      # 2 x 4 patches
    torch.Size([2, 8, 2, 4])
    >>> conv = F.conv2d(x, proj.weight, proj.bias, stride=10)
    >>> torch.allclose(out, conv, atol=1e-5)
    True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            # the TorchScript ONNX exporter (torch < 2.9) would bake the
            # unfolded batch size into the graph: the convolution exports
            return super().forward(x)
        (pf, pt), (sf, st) = self.kernel_size, self.stride
        device = x.device.type
        if torch.is_autocast_enabled(device):
            x = x.to(torch.get_autocast_dtype(device))
        # (B, 1, F, T) -> windows (B, f, t, pf, pt), a view
        windows = x[:, 0].unfold(1, pf, sf).unfold(2, pt, st)
        f, t = windows.shape[1:3]
        patches = windows.reshape(x.shape[0], f * t, pf * pt)  # the one copy
        out = F.linear(patches, self.weight.flatten(1), self.bias)
        return out.transpose(1, 2).unflatten(2, (f, t))
