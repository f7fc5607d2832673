"""Stand-in of modules.devices: the fields the model loader sets."""
import torch

cpu = torch.device("cpu")
device = torch.device("cpu")
fp8 = False
dtype = torch.float16
dtype_unet = torch.float16
dtype_vae = torch.float16
