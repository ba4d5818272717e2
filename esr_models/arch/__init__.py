"""Model definitions and their checkpoints. One file per model (ifadnet.py, pfdnlite.py, rlfn.py):
its nn.Module and its ``ARCHITECTURE`` record (record.py: names, checkpoint, identifying keys,
the key-rename table, hyper-parameters, min_size, memory per pixel); registry.py collects the
records and detects a state dict's architecture; checkpoints.py reads checkpoint files and
weights.py finds and verifies the upstream ones. Imports nothing else from esr_models."""
