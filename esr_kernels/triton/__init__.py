"""Triton kernels and their launchers. Importing this needs triton; nothing else imports it
eagerly."""
