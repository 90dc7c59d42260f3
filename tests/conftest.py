import os

import pytest
import torch

# Triton kernels run on the CPU under the interpreter when there is no GPU.
# Must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine"
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
