import torch

# One intra-op thread: the suite shares 2 cores with its own worker processes (DataLoader, FFCV,
# gloo peers), and 2 OpenMP threads contending for them measured ~5x slower than 1.
torch.set_num_threads(1)
