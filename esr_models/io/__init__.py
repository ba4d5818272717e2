"""Files: reading and writing images and videos, output naming and atomic writes, a batch of files
(jobs), the shipped sample image."""
