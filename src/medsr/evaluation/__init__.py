"""Judging models: quality tables against interpolation, side-by-side comparisons, diagnostic fidelity.

quality.py    PSNR / SSIM / MS-SSIM / fine detail per image and per method (`medsr evaluate`)
compare.py    figures and tables of several methods (`medsr compare`)
diagnostic.py does a classifier trained on originals still diagnose the upscaled images
"""
