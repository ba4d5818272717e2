"""Running a model: ``load`` (reference or fused), tiling, memory estimates, the image ``Upscaler``,
complexity counts."""
