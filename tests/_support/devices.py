"""The devices every op test runs on: the CPU, plus CUDA where a GPU is visible."""
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
