"""The bundled runtime: serve a layout for real, a host and one worker process per GPU.

Folders follow the domain: checkpoint (Hugging Face-style directories: read a layer range, write a random
one), model (Qwen3/Qwen2/LLaMA layers in torch, a pipeline stage), kvcache (per-request KV slots), sampling,
wire (ZeroMQ frames: a msgpack header and raw tensor bytes), worker (continuous batching of one stage),
host (admission, routing, sampling parameters, streaming, HTTP), launch (everything on one machine).
The runtime reads the config `planner export --to runtime` writes (runtime.config); it routes with
planner.routing, the code the simulator routes with. Install with `pip install -e .[runtime]`.
"""
