"""Messages on the wire: ZeroMQ multipart frames, a msgpack header then raw tensor bytes (no pickle), and
the inbox (a PULL socket) the host, each worker and each tensor-parallel rank receives them on.

    frame 0   msgpack map: {"kind": str, ..., "tensors": [{"dtype": "float32", "shape": [T, 64]}, ...]}
    frame 1.. one frame per tensor: its bytes, C order, native little-endian

Kinds: "work" (host or worker -> worker: items and their token ids or hidden states), "tokens" (last
stage -> host: sampled ids), "free" (host -> worker: requests that ended), "beat" (worker -> host:
alive, free KV slots), "error" (worker -> host: requests it could not serve), "stop" (host -> worker).
"""

from __future__ import annotations

import warnings

import msgpack
import torch
import zmq

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int64": torch.int64, "int32": torch.int32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def bind_inbox(context: zmq.Context, endpoint: str, who: str) -> zmq.Socket:
    """A PULL socket bound at `endpoint` (linger 0: what is unsent dies with it). Where it cannot bind (another
    machine's address, a port taken), an OSError naming `who` and the endpoint, one line from the CLI."""
    inbox = context.socket(zmq.PULL)
    inbox.setsockopt(zmq.LINGER, 0)
    try:
        inbox.bind(endpoint)
    except zmq.ZMQError as exc:
        inbox.close()
        raise OSError(exc.errno, f"{who} cannot listen on {endpoint}: {exc.strerror} (run it on the machine "
                                 "with that address and a free port, or re-export with the right ones)") from None
    return inbox


def encode(header: dict, tensors: tuple[torch.Tensor, ...] = ()) -> list:
    """Frames for send_multipart: the header (with each tensor's dtype and shape) and the tensors' bytes."""
    header = dict(header, tensors=[{"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)} for t in tensors])
    frames: list = [msgpack.packb(header, use_bin_type=True)]
    for t in tensors:
        t = t.detach().contiguous().cpu()
        frames.append(t.view(torch.uint8).numpy() if t.numel() else b"")  # bf16 has no numpy type: send bytes
    return frames


def decode(frames: list, device: str | torch.device = "cpu") -> tuple[dict, list[torch.Tensor]]:
    """(header, tensors on `device`) from received frames (bytes or zmq.Frame)."""
    header = msgpack.unpackb(bytes(frames[0]), raw=False)
    tensors = []
    for spec, frame in zip(header.get("tensors", ()), frames[1:]):
        dtype = DTYPES[spec["dtype"]]
        buffer = memoryview(frame.buffer if hasattr(frame, "buffer") else frame)
        if len(buffer) == 0:
            tensors.append(torch.empty(spec["shape"], dtype=dtype, device=device))
            continue
        with warnings.catch_warnings():  # the frame is read-only; the copy below owns its memory
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(buffer, dtype=dtype)
        tensors.append(flat.view(spec["shape"]).to(device=device, copy=True))
    return header, tensors
