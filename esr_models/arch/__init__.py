"""Model definitions (IFADNet, PFDNLite, RLFN and their layers) and their checkpoints: where the
files are (weights), how their keys map (registry, upstream_keys), reading them (checkpoints).
Imports nothing else from esr_models."""
