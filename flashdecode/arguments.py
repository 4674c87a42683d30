"""Argument checks for the public entry points: a wrong type is one TypeError naming the argument, at the call.

    check_types(crf=(crf, int, "an integer like 18"), fps=(fps, (int, float), "a number like 16"))

None always passes (every checked argument has a default of None); bool never passes for a number (True is
an int to Python, but `crf=True` is a mistake). Without this, `crf="20"` or `batch_index="0"` fail deep inside
PyAV or a comparison, minutes into a run or with a message about something else.
"""
from __future__ import annotations

import os


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_types(**arguments: tuple) -> None:
    """Each name=(value, type or tuple of types, what it should be): TypeError for the first that is not."""
    for name, (value, types, wanted) in arguments.items():
        if value is None:
            continue
        types = types if isinstance(types, tuple) else (types,)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise TypeError(f"{name} must be {wanted}, not {_describe(value)}")


PATH = (str, os.PathLike)


def is_decoder(value) -> bool:
    """A loaded decoder of any family: what decode_file and the batch need of one (see engine.Decoder)."""
    return all(hasattr(value, a) for a in ("stream", "latent_space", "pixel_size", "estimate_memory"))


__all__ = ["PATH", "check_types", "is_decoder"]
