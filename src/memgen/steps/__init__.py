"""File-level steps: read HDF5 inputs, call the library, write one HDF5 output.

Each step takes ``inputs`` (name -> path), one ``output`` path and a ``params`` dict
that is written verbatim into the output's provenance. Params nest: a step's params
hold the params of the files it reads (``train`` holds ``init`` which holds
``dataset``), and every input is checked against them (``params_sha256``), so an
intermediate produced by other parameters is refused instead of silently used.

One module per family (``core`` holds the steps the network families share), so the
code hash of a step (memgen.provenance.STEP_MODULES) covers only its own family's file.
``STEPS`` maps a step name to (function, required input names, help). The CLI also
passes ``progress``, the label of the step's progress lines (``"STEP OUTPUT-STEM"``;
None, the default when a step is called directly, is silent: memgen.progress).
"""

from memgen.steps import core, curvature, double_descent, kernels
from memgen.steps.core import resolve_device

STEPS = {**core.STEPS, **double_descent.STEPS, **kernels.STEPS, **curvature.STEPS}

__all__ = ["STEPS", "resolve_device"]
