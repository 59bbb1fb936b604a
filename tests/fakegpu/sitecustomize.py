"""Loaded by Python at start-up when this folder is on PYTHONPATH: with DETSERVE_FAKE_GPU=1 the
process gets the fake tensorrt and pycuda modules (tests/fakes.py), so a real GPU worker process
runs the real TensorRTBackend glue on a machine with no GPU. DETSERVE_FAKE_TRT_VERSION picks the
TensorRT version the fake imitates (10.3.0 unless set)."""

import os
import sys

if os.environ.get("DETSERVE_FAKE_GPU") == "1":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import fakes

    sys.modules.update(fakes.modules(os.environ.get("DETSERVE_FAKE_TRT_VERSION", fakes.VERSIONS[10])))
