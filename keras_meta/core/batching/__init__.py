"""All tasks of a meta-batch in one pass of the network: stacked fast weights, grouped kernels.

`batched_functional_call` runs `T` tasks, each with its own parameters, as one network;
`unsupported_layers` says why a model cannot; `register_batched_kernel` adds a layer type.
"""

from keras_meta.core.batching import kernels as _kernels  # noqa: F401  (registers Keras layers)
from keras_meta.core.batching.batched_call import batched_functional_call
from keras_meta.core.batching.kernels import (convolutions_fall_back_to_patches,
                                               cpu_grouped_gradients,
                                               grouped_convolution_available)
from keras_meta.core.batching.shared_start import SHARED_OPTION
from keras_meta.core.batching.support import register_batched_kernel, unsupported_layers

__all__ = ["SHARED_OPTION", "batched_functional_call", "convolutions_fall_back_to_patches",
           "cpu_grouped_gradients", "grouped_convolution_available", "register_batched_kernel",
           "unsupported_layers"]
