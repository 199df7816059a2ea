"""One module per command group; each exposes ``register(app)``.

Modules import heavy dependencies (torch, onnxruntime) inside their command functions, so that
`latentz --help` and the torch-free commands (encode, decode, serve) start fast.
"""
