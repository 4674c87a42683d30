"""Making and judging weights: video clips -> teacher latents (cached) -> the training loop -> evaluation.

video_data (real video -> clips), teachers (Wan VAE from a local path; the demo PCA codec in demo_codec),
latent_cache (teacher latents encoded once), train (the loop, DDP under torchrun), linear_init (start from a
linear teacher's exact inverse), evaluate + metrics (PSNR/SSIM against ground truth).
"""
