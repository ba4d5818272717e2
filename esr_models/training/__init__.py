"""Training: train-time (re-parameterisable) networks, ``trainable``/``deploy``, the ``esr train``
loop, shipped recipes and deploy-checkpoint export."""
from .deploy_checkpoint import export_deploy_checkpoint
from .models import deploy, prune_pfdnlite, trainable

__all__ = ["trainable", "deploy", "prune_pfdnlite", "export_deploy_checkpoint"]
