"""This process's RNG states (python, numpy, torch CPU/CUDA, Megatron tracker) as JSON-able values."""

from __future__ import annotations

import base64
import logging
import random
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode())


def _tensor_state(t: torch.Tensor) -> str:
    return _b64(t.cpu().contiguous().numpy().tobytes())


def _to_state_tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(_unb64(s)), dtype=torch.uint8).clone()


def _megatron_tracker():
    try:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        return get_cuda_rng_tracker()
    except Exception:  # noqa: BLE001 - megatron absent or its tracker not set up
        return None


def capture_rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (CPU, CUDA) and Megatron tracker RNG states, JSON-able."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, _b64(np.asarray(mt, dtype=np.uint32).tobytes()), gauss],
        "numpy": [
            np_name,
            _b64(np.asarray(np_keys, dtype=np.uint32).tobytes()),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": _tensor_state(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_tensor_state(s) for s in torch.cuda.get_rng_state_all()]
    tracker = _megatron_tracker()
    if tracker is not None:
        try:
            states = tracker.get_states()
            if states:
                state["megatron"] = {k: _tensor_state(v) for k, v in states.items()}
        except Exception as e:  # noqa: BLE001
            logger.debug("megatron RNG tracker states not captured: %s", e)
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in np.frombuffer(_unb64(mt), dtype=np.uint32)), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.frombuffer(_unb64(keys), dtype=np.uint32).copy(), pos, has_gauss, cached))
    torch.set_rng_state(_to_state_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_to_state_tensor(s) for s in state["cuda"]])
    if "megatron" in state:
        tracker = _megatron_tracker()
        if tracker is not None:
            tracker.set_states({k: _to_state_tensor(v) for k, v in state["megatron"].items()})
