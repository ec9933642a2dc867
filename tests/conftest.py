import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("DREAM3D_TEST_THREADS", "2")))

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("DREAM3D_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set DREAM3D_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
