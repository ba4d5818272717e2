"""Training: train-time (re-parameterisable) networks, ``trainable``/``deploy``, the ``esr train``
loop, shipped recipes and deploy-checkpoint export."""
from .models import deploy, prune_pfdnlite, trainable

__all__ = ["trainable", "deploy", "prune_pfdnlite"]
