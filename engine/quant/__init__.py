"""Quantization: formats (how weights become codes), methods (how codes are chosen), layers
(the kernels that multiply by them) and the pipeline that drives a model through them."""
