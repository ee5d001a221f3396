"""The forward pass of a TFLite model variant (``runtime: tflite`` in its card).

The quantize job (``jobs/quantize_model.py``) converts a model with ONE output, the embedding and
the class probabilities side by side (``embedding ++ probabilities``), so nothing here depends
on the order in which a converter lists outputs: the first ``dim`` columns are the embedding.

One interpreter per loaded model, resized when the batch size changes (a resize costs about
what the invoke of a small batch does, and keeps one copy of the packed weights instead of one
per batch size). An interpreter is not thread-safe, and the Classifier runs batches in worker
threads, so calls take a lock.
"""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np


def default_threads() -> int:
    """The CPU threads TensorFlow was limited to (``configure_tensorflow``), else this process's CPUs:
    TFLite keeps its own thread pool, so it must be told."""
    import tensorflow as tf

    threads = tf.config.threading.get_intra_op_parallelism_threads()
    return threads if threads > 0 else len(os.sched_getaffinity(0))


class TFLiteForward:
    """``x`` (n, *input_shape) float32 → ``(embeddings, probabilities)``, unnormalised, as numpy."""

    def __init__(self, content: bytes, input_shape: tuple[int, ...], *, dim: int, classes: int, threads: int = 0):
        import tensorflow as tf

        with warnings.catch_warnings():  # tf.lite.Interpreter's notice that LiteRT will replace it
            warnings.simplefilter("ignore")
            self._interpreter = tf.lite.Interpreter(model_content=content, num_threads=threads or default_threads())
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"a TFLite variant has one input and one output (embedding ++ probabilities); "
                             f"this one has {len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0]["index"], outputs[0]["index"]
        got_in = tuple(int(d) for d in inputs[0]["shape_signature"][1:])
        width = int(outputs[0]["shape_signature"][-1])
        if got_in != tuple(input_shape) or width != dim + classes:
            raise ValueError(f"TFLite model takes {got_in} and gives {width} columns; its card says inputs "
                             f"{tuple(input_shape)}, embedding {dim} + {classes} classes")
        self.dim, self.classes = dim, classes
        self._batch = -1
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, self.classes), np.float32)
        x = np.ascontiguousarray(x, np.float32)
        with self._lock:
            if len(x) != self._batch:
                self._interpreter.resize_tensor_input(self._input, x.shape, strict=False)
                self._interpreter.allocate_tensors()
                self._batch = len(x)
            self._interpreter.set_tensor(self._input, x)
            self._interpreter.invoke()
            y = self._interpreter.get_tensor(self._output)  # a copy: safe after the lock
        return y[:, :self.dim], y[:, self.dim:]
