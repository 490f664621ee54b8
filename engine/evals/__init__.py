"""Evaluation: fidelity to the 16-bit model (KLD / top-1 / PPL); tasks and statistics."""
